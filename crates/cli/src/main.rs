//! `ncct2ctpa`: learn to turn non-contrast chest CT into synthetic CT pulmonary angiography,
//! and do it. A thin binary over the library crates; each subcommand lives in `cmd/`.

/// `println!` that never panics: a closed standard output (`ncct2ctpa info ... | head -1`)
/// is not an error of ours, so what is left to print is dropped, as Unix tools do, and the
/// command goes on (a training run keeps training).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (a closed standard error, `2>&1 | head`).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod cmd;
mod logging;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "ncct2ctpa", version, about, long_about = None)]
struct Cli {
    /// More log output: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a paired chest phantom dataset (NCCT, CTPA, ground truth) as NIfTI.
    Synth(cmd::synth::Args),
    /// Print a volume's header (NIfTI file or DICOM folder), or a model's parameter counts.
    Info(cmd::info::Args),
    /// Convert a DICOM series (or any volume we read) to NIfTI.
    Convert(cmd::convert::Args),
    /// Turn a raw paired dataset into a prepared slice store for training.
    Prepare(cmd::prepare::Args),
    /// Train the RegGAN model (with no --data: the built-in phantom demo on the CPU).
    Train(cmd::train::Args),
    /// Synthesize CTPA volumes from NCCT volumes with a trained model.
    Predict(cmd::predict::Args),
    /// Score predictions against targets (MAE, PSNR, SSIM in HU, inside masks).
    Evaluate(cmd::evaluate::Args),
    /// Benchmark training, inference, data loading and memory, side by side with PyTorch.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    model::guard::install_panic_hook();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            // The whole cause chain, once, at the top.
            errln!("error: {err}");
            for cause in err.chain().skip(1) {
                errln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Synth(args) => cmd::synth::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Prepare(args) => cmd::prepare::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Evaluate(args) => cmd::evaluate::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    }
}
