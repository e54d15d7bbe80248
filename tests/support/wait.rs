//! Polling with a deadline: what a test waits for is checked again and again until it holds or the time is
//! up, never slept off.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const EVERY: Duration = Duration::from_millis(50);

/// What a poll returns: whether the awaited state is reached and, if so, with what value.
pub trait Poll {
    type Ready;
    /// `Ok(value)` when reached; otherwise what was seen instead, if the poll said.
    fn ready(self) -> Result<Self::Ready, Option<String>>;
}

impl Poll for bool {
    type Ready = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Poll for Option<T> {
    type Ready = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` carries what was seen instead; the timeout names the last one.
impl<T> Poll for Result<T, String> {
    type Ready = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// The awaited state was not reached in time.
pub struct Timeout {
    pub what: String,
    pub after: Duration,
    /// What the last poll saw instead, when it said.
    pub last: Option<String>,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: not within {:?}", self.what, self.after)?;
        if let Some(last) = &self.last {
            write!(f, "; last seen: {last}")?;
        }
        Ok(())
    }
}

/// As `Display`, so that `unwrap` and `expect` print the context.
impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Timeout {}

/// Polls `poll` (every 50 ms) until it reports its state reached, for at most `within`; `what` names the
/// state for the error on timeout. The poll runs at least once.
pub async fn wait_until<F, Fut>(
    within: Duration,
    what: &str,
    mut poll: F,
) -> Result<<Fut::Output as Poll>::Ready, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Poll,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match poll().await.ready() {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                after: within,
                last,
            });
        }
        tokio::time::sleep(EVERY).await;
    }
}
