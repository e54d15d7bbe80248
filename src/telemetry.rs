//! Logging: one subscriber, JSON for machines or pretty for people, filtered by `RUST_LOG`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Installs the global subscriber once; later calls (tests) are ignored.
pub fn init(format: LogFormat) {
    init_with_default(
        format,
        &format!(
            "info,{},diesel=warn,h2=warn,hyper=warn,reqwest=warn",
            crate::web::server::LOG_DIRECTIVES
        ),
    );
}

/// Like [`init`], with another filter when `RUST_LOG` is unset (the demo keeps its terminal quiet).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let registry =
        tracing_subscriber::registry().with(ClientFaults.with_filter(filter_fn(is_client_fault)));
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_filter(filter_fn(not_client_fault))
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt.compact()
                    .with_filter(filter_fn(not_client_fault))
                    .with_filter(filter),
            )
            .try_init(),
    };
}

/// Installs a JSON subscriber writing to `writer` instead of stderr, with `filter` as the filter. Returns
/// `false` if a global subscriber was already installed. Tests use it to capture every log line of a
/// scenario and prove no secret is ever written.
pub fn init_with_writer<W>(filter: &str, writer: W) -> bool
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    json_subscriber(filter, writer).try_init().is_ok()
}

/// The JSON subscriber of [`init_with_writer`], not installed.
pub fn json_subscriber<W>(filter: &str, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_filter(filter_fn(not_client_fault))
        .with_filter(EnvFilter::new(filter));
    tracing_subscriber::registry()
        .with(ClientFaults.with_filter(filter_fn(is_client_fault)))
        .with(fmt)
}

/// The HTTP server's lines about one client's broken request (see `web::server::is_client_fault`) are not
/// written; [`ClientFaults`] counts them instead.
fn is_client_fault(m: &Metadata<'_>) -> bool {
    crate::web::server::is_client_fault(m.target(), *m.level() == Level::ERROR)
}

fn not_client_fault(m: &Metadata<'_>) -> bool {
    !is_client_fault(m)
}

/// Counts client faults (`http_malformed_connections_total`); [`report_client_faults`] says how many
/// there were, as one warning a minute. (A layer cannot log itself: tracing drops events raised while an
/// event is being dispatched.)
struct ClientFaults;

static CLIENT_FAULTS: AtomicU64 = AtomicU64::new(0);

/// How often the count of client faults is logged.
pub const CLIENT_FAULT_INTERVAL: Duration = Duration::from_secs(60);

impl<S: Subscriber> Layer<S> for ClientFaults {
    fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
        crate::metrics::malformed_connection();
        CLIENT_FAULTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Logs one warning with the client faults counted since the last call, if there were any.
pub fn report_client_faults() {
    let count = CLIENT_FAULTS.swap(0, Ordering::Relaxed);
    if count > 0 {
        tracing::warn!(
            count,
            "clients sent malformed requests or broke off (counted in http_malformed_connections_total)"
        );
    }
}

/// Reports client faults every [`CLIENT_FAULT_INTERVAL`] until `shutdown` turns true.
pub fn spawn_fault_reporter(
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CLIENT_FAULT_INTERVAL) => report_client_faults(),
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
    })
}
