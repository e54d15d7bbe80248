//! Logging: one subscriber, JSON for machines or pretty for people, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(format: LogFormat) {
    init_with_default(
        format,
        "info,actix_server=warn,diesel=warn,h2=warn,hyper=warn,reqwest=warn",
    );
}

/// Like [`init`], with another filter when `RUST_LOG` is unset (the demo keeps its terminal quiet).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Installs a JSON subscriber writing to `writer` instead of stderr, with `filter` as the filter. Returns
/// `false` if a global subscriber was already installed. Tests use it to capture every log line of a
/// scenario and prove no secret is ever written.
pub fn init_with_writer<W>(filter: &str, writer: W) -> bool
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .try_init()
        .is_ok()
}
