//! 3D connected-component labelling with a union-find (no recursion, so no stack overflow on
//! a lung of millions of voxels).

use ndarray::{Array3, ArrayView3};

/// Which neighbours touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// Faces only (6 neighbours): thin diagonal bridges do not join components.
    Six,
    /// Faces, edges and corners (26 neighbours).
    TwentySix,
}

/// The labelled components of a binary volume.
#[derive(Debug, Clone)]
pub struct Components {
    /// `[z, y, x]`; 0 is background, components are `1..=sizes.len()` in scan order of their
    /// first voxel (z, then y, then x).
    pub labels: Array3<u32>,
    /// Number of voxels of component `l` at `sizes[l - 1]`.
    pub sizes: Vec<usize>,
}

impl Components {
    /// Number of components.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Label of the largest component (the first one on ties), if any.
    pub fn largest(&self) -> Option<u32> {
        let mut best: Option<(usize, usize)> = None;
        for (i, &s) in self.sizes.iter().enumerate() {
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i as u32 + 1)
    }

    /// Labels sorted by decreasing size (ties: lower label first).
    pub fn by_size(&self) -> Vec<u32> {
        let mut l: Vec<u32> = (1..=self.sizes.len() as u32).collect();
        l.sort_by(|a, b| self.sizes[*b as usize - 1].cmp(&self.sizes[*a as usize - 1]));
        l
    }

    /// A 0/1 mask of the given labels.
    pub fn select(&self, keep: &[u32]) -> Array3<u8> {
        let mut lut = vec![0u8; self.sizes.len() + 1];
        for &l in keep {
            if let Some(v) = lut.get_mut(l as usize) {
                *v = u8::from(l != 0);
            }
        }
        self.labels.mapv(|l| lut[l as usize])
    }
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize]; // path halving
        x = p;
    }
    x
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // Keep the smaller root so final labels follow scan order.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

/// Labels the non-zero voxels of `mask` (`[z, y, x]`) into connected components.
///
/// Two passes: the first gives each voxel a provisional label, merging with the already-visited
/// neighbours through a union-find; the second resolves each label to its root and renumbers
/// roots densely in scan order.
pub fn label(mask: ArrayView3<u8>, connectivity: Connectivity) -> Components {
    let (nz, ny, nx) = mask.dim();
    let mut labels = Array3::<u32>::zeros((nz, ny, nx));
    // parent[0] is the background sentinel.
    let mut parent: Vec<u32> = vec![0];
    // Neighbours already visited in scan order, as (dz, dy, dx).
    let mut back: Vec<(isize, isize, isize)> = Vec::new();
    for dz in -1isize..=0 {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                if (dz, dy, dx) >= (0, 0, 0) {
                    continue;
                }
                let order = dz.abs() + dy.abs() + dx.abs();
                if connectivity == Connectivity::Six && order != 1 {
                    continue;
                }
                back.push((dz, dy, dx));
            }
        }
    }
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if mask[[z, y, x]] == 0 {
                    continue;
                }
                let mut current = 0u32;
                for &(dz, dy, dx) in &back {
                    let (zz, yy, xx) = (z as isize + dz, y as isize + dy, x as isize + dx);
                    if zz < 0 || yy < 0 || xx < 0 || yy >= ny as isize || xx >= nx as isize {
                        continue;
                    }
                    let l = labels[[zz as usize, yy as usize, xx as usize]];
                    if l == 0 {
                        continue;
                    }
                    if current == 0 {
                        current = l;
                    } else if l != current {
                        union(&mut parent, current, l);
                    }
                }
                if current == 0 {
                    current = parent.len() as u32;
                    parent.push(current);
                }
                labels[[z, y, x]] = current;
            }
        }
    }
    // Resolve roots and renumber densely.
    let mut dense = vec![0u32; parent.len()];
    let mut sizes = Vec::new();
    for l in 1..parent.len() as u32 {
        let r = find(&mut parent, l);
        if r == l {
            sizes.push(0usize);
            dense[l as usize] = sizes.len() as u32;
        }
    }
    for l in 1..parent.len() as u32 {
        let r = find(&mut parent, l);
        dense[l as usize] = dense[r as usize];
    }
    for v in labels.iter_mut() {
        if *v != 0 {
            *v = dense[*v as usize];
            sizes[*v as usize - 1] += 1;
        }
    }
    Components { labels, sizes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_touch_depends_on_connectivity() {
        let mut m = Array3::<u8>::zeros((3, 3, 3));
        m[[0, 0, 0]] = 1;
        m[[1, 1, 1]] = 1;
        m[[2, 2, 2]] = 1;
        m[[2, 2, 1]] = 1;
        let six = label(m.view(), Connectivity::Six);
        assert_eq!(six.count(), 3);
        assert_eq!(six.sizes, vec![1, 1, 2]);
        let all = label(m.view(), Connectivity::TwentySix);
        assert_eq!(all.count(), 1);
        assert_eq!(all.sizes, vec![4]);
    }

    #[test]
    fn u_shape_merges_late_into_one_component() {
        // A U in one slice: the two arms get different provisional labels and meet at the base.
        let mut m = Array3::<u8>::zeros((1, 5, 5));
        for y in 0..5 {
            m[[0, y, 0]] = 1;
            m[[0, y, 4]] = 1;
        }
        for x in 0..5 {
            m[[0, 4, x]] = 1;
        }
        m[[0, 1, 2]] = 1; // an island
        let c = label(m.view(), Connectivity::Six);
        assert_eq!(c.count(), 2);
        assert_eq!(c.largest(), Some(1));
        assert_eq!(c.sizes, vec![13, 1]);
        assert_eq!(c.labels[[0, 0, 4]], 1);
        assert_eq!(c.select(&[2]).sum(), 1);
    }
}
