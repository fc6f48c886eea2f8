#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = notification_service::Config::from_env().unwrap_or_else(|error| error.exit());
    shared::telemetry::init("notification_service");
    notification_service::build(config)
        .await?
        .run_until_signal()
        .await
}
