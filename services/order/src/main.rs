#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = order_service::Config::from_env().unwrap_or_else(|error| error.exit());
    shared::telemetry::init("order_service");
    order_service::build(config).await?.run_until_signal().await
}
