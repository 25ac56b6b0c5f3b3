//! Logging setup: `tracing` to stderr; `-v`/`-vv` raise the level, `RUST_LOG` overrides.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Default level is `info` for our crates, `warn` for others.
pub fn init(verbose: u8, quiet: bool) {
    let ours = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let default = format!(
        "warn,ncct2ctpa={ours},cli={ours},util={ours},volume={ours},dataset={ours},\
         metrics={ours},evaluate={ours},torchext={ours},model={ours},infer={ours},train={ours},\
         bench={ours}"
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colours only on a terminal: a log redirected to a file stays plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose > 0)
        .try_init();
}
