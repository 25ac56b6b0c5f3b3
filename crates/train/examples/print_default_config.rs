//! Prints the default training configuration as TOML (the values `configs/default.toml`
//! documents): `cargo run -p train --example print_default_config`.

fn main() -> anyhow::Result<()> {
    print!("{}", train::TrainConfig::default().to_toml_string()?);
    Ok(())
}
