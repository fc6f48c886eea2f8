fn main() -> anyhow::Result<()> {
    let config = order_service::Config::from_env().unwrap_or_else(|error| error.exit());
    shared::runtime::build(config.common.worker_threads)?.block_on(async {
        let _telemetry = shared::telemetry::init("order-service");
        order_service::build(config).await?.run_until_signal().await
    })
}
