//! Signals: the first SIGTERM or SIGINT starts a drain, a second one exits at once.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Exit code after a second signal cut the drain short (128 + SIGINT, as shells report it).
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installs the handlers and returns the token the first signal cancels. Handlers are
/// registered before this returns, so no early signal is missed.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let drain = token.clone();
    tokio::spawn(async move {
        let first = next_signal(&mut terminate, &mut interrupt).await;
        tracing::info!(
            signal = first,
            "shutdown requested, draining (send again to exit at once)"
        );
        drain.cancel();
        let second = next_signal(&mut terminate, &mut interrupt).await;
        tracing::warn!(
            signal = second,
            "second signal, exiting without finishing the drain"
        );
        std::process::exit(FORCED_EXIT_CODE);
    });
    Ok(token)
}

async fn next_signal(terminate: &mut Signal, interrupt: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}
