use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = loadgen::Args::parse();
    let report = loadgen::run(args).await?;
    // Nonzero when an order was lost or an error seen, so scripts can assert.
    if !report.clean() {
        std::process::exit(1);
    }
    Ok(())
}
