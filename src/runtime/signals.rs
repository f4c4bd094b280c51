//! The signals of `hongbao serve`, on the main thread: every signal an operator or a
//! supervisor may send is handled or ignored, none kills the server by its default action.
//!
//! | signal | what the server does |
//! |---|---|
//! | SIGTERM, SIGINT, SIGQUIT | stop gracefully (docs/SAFETY.md); a second one exits at once |
//! | SIGHUP | reload: key lists, and the reloadable settings of the settings file |
//! | SIGUSR1 | print a status line on stderr |
//! | SIGUSR2, SIGALRM, SIGXFSZ, SIGPIPE | ignored (SIGXFSZ: a write past the file size limit then fails, and a log write that fails stops the server cleanly) |
//!
//! The handlers only set flags; the main thread acts on them between its checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{
    SIGALRM, SIGHUP, SIGINT, SIGPIPE, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGXFSZ,
};

pub struct Signals {
    /// Set by the stop signals (and by the server itself when it stops for another reason).
    pub shutdown: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    usr1: Arc<AtomicBool>,
}

impl Signals {
    pub fn install() -> Result<Signals, String> {
        let fail = |e: std::io::Error| format!("signal handler: {e}");
        let shutdown = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM, SIGQUIT] {
            // A second stop signal while stopping exits at once.
            signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.clone())
                .map_err(fail)?;
            signal_hook::flag::register(signal, shutdown.clone()).map_err(fail)?;
        }
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGHUP, hup.clone()).map_err(fail)?;
        let usr1 = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGUSR1, usr1.clone()).map_err(fail)?;
        // A handler that does nothing, not SIG_IGN: an ignored disposition would be inherited
        // by the process image the start-up watchdog may exec.
        let ignored = Arc::new(AtomicBool::new(false));
        for signal in [SIGUSR2, SIGALRM, SIGXFSZ, SIGPIPE] {
            signal_hook::flag::register(signal, ignored.clone()).map_err(fail)?;
        }
        Ok(Signals {
            shutdown,
            hup,
            usr1,
        })
    }

    /// A SIGHUP arrived since the last call.
    pub fn take_hup(&self) -> bool {
        self.hup.swap(false, Ordering::Relaxed)
    }

    /// A SIGUSR1 arrived since the last call.
    pub fn take_usr1(&self) -> bool {
        self.usr1.swap(false, Ordering::Relaxed)
    }
}
