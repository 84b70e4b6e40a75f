//! Logging set-up: plain or JSON lines on stderr, filtered by `RUST_LOG` (default `info`),
//! with the filter changeable at runtime through the admin API (`/logging?level=`).

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use super::{BadLogFilter, LogControl};

/// The live log filter.
pub struct ReloadableFilter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set(&self, filter: &str) -> Result<(), BadLogFilter> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| BadLogFilter(e.to_string()))?;
        self.handle
            .reload(parsed)
            .map_err(|e| BadLogFilter(e.to_string()))?;
        if let Ok(mut current) = self.current.lock() {
            *current = filter.to_owned();
        }
        Ok(())
    }
}

/// Installs the global subscriber; returns the handle that changes its filter.
pub fn init(json: bool) -> Arc<ReloadableFilter> {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Arc::new(ReloadableFilter {
        handle,
        current: Mutex::new(initial),
    })
}
