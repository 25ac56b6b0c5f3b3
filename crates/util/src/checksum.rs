//! SHA-256 checksums of source volumes, so the manifest records exactly what was prepared and a
//! rerun can tell a changed source from an unchanged one.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_file_into(hasher: &mut Sha256, path: &Path) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Every non-hidden file below `dir`, as paths relative to `dir`, sorted.
fn files_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let child = rel.join(entry.file_name());
            let meta = std::fs::metadata(entry.path())?;
            if meta.is_dir() {
                stack.push(child);
            } else if meta.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A file that could not be read for its checksum.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot read for its checksum: {source}", path.display())]
pub struct ChecksumError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// SHA-256 (lower-case hex) of a file, or of a folder: for each non-hidden file below it in
/// sorted relative-path order, the path, a NUL, the length as 8 little-endian bytes and the
/// content. Renaming, adding or changing any file of a DICOM series changes the checksum.
/// Errors name the file that could not be read.
pub fn sha256_path(path: &Path) -> Result<String, ChecksumError> {
    sha256_inner(path).map_err(|(path, source)| ChecksumError { path, source })
}

fn sha256_inner(path: &Path) -> Result<String, (PathBuf, std::io::Error)> {
    let mut hasher = Sha256::new();
    let meta = std::fs::metadata(path).map_err(|e| (path.to_path_buf(), e))?;
    if meta.is_dir() {
        let files = files_below(path).map_err(|e| (path.to_path_buf(), e))?;
        for rel in files {
            let full = path.join(&rel);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0u8]);
            let len = std::fs::metadata(&full)
                .map_err(|e| (full.clone(), e))?
                .len();
            hasher.update(len.to_le_bytes());
            hash_file_into(&mut hasher, &full).map_err(|e| (full.clone(), e))?;
        }
    } else {
        hash_file_into(&mut hasher, path).map_err(|e| (path.to_path_buf(), e))?;
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_checksum_matches_known_sha256() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc.txt");
        std::fs::write(&p, b"abc").unwrap();
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_path(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn folder_checksum_sees_content_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("s")).unwrap();
        std::fs::write(d.path().join("s/1.dcm"), b"one").unwrap();
        std::fs::write(d.path().join("s/2.dcm"), b"two").unwrap();
        let a = sha256_path(&d.path().join("s")).unwrap();
        std::fs::write(d.path().join("s/2.dcm"), b"TWO").unwrap();
        let b = sha256_path(&d.path().join("s")).unwrap();
        assert_ne!(a, b);
        std::fs::rename(d.path().join("s/2.dcm"), d.path().join("s/3.dcm")).unwrap();
        let c = sha256_path(&d.path().join("s")).unwrap();
        assert_ne!(b, c);
        // Hidden files (.DS_Store) do not count.
        std::fs::write(d.path().join("s/.DS_Store"), b"x").unwrap();
        assert_eq!(sha256_path(&d.path().join("s")).unwrap(), c);
    }
}
