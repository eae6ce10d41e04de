//! One vhost-user socket per export: a thread that accepts a frontend,
//! serves it until it disconnects, and listens again (so a frontend that
//! reconnects, e.g. QEMU with `reconnect=1`, finds the socket waiting).

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{error, info, warn};
use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError, Listener};

use crate::connection::Connection;
use crate::device::BlkBackend;
use crate::export::{Export, Stats};

/// Why an export could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: vhost::vhost_user::Error,
    },
    #[error("cannot start the serving thread for {path}: {source}")]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running export: its socket's thread and how to stop it.
pub struct Served {
    pub export: Arc<Export>,
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    connection: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Starts listening on `socket` (an existing file there is replaced).
    pub fn start(export: Arc<Export>, socket: &Path) -> Result<Served, ServeError> {
        let listener = Listener::new(socket, true).map_err(|source| ServeError::Listen {
            path: socket.to_path_buf(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let connection = Arc::new(Mutex::new(None));
        let thread = {
            let export = export.clone();
            let stop = stop.clone();
            let connection = connection.clone();
            let path = socket.to_path_buf();
            std::thread::Builder::new()
                .name(format!("vhost-{}", export.target.name()))
                .spawn(move || accept_loop(export, listener, &path, &stop, &connection))
                .map_err(|source| ServeError::Thread {
                    path: socket.to_path_buf(),
                    source,
                })?
        };
        info!(export = export.target.name(), socket = %socket.display(), read_only = export.target.read_only(), "serving");
        Ok(Served {
            export,
            socket: socket.to_path_buf(),
            stop,
            connection,
            thread: Some(thread),
        })
    }

    /// Is a frontend connected right now?
    pub fn connected(&self) -> bool {
        self.connection.lock().is_some()
    }

    /// Stops serving: drops the connection (if any), closes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self.connection.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // A worker blocked in a pause must be let go for the thread to end.
        self.export.gate.open();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!(socket = %self.socket.display(), "serving thread panicked");
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Waits up to `timeout` for the listening socket to become readable.
fn readable(listener: &Listener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the
    // count passed is exactly 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && (pfd.revents & libc::POLLIN) != 0
}

fn accept_loop(
    export: Arc<Export>,
    listener: Listener,
    path: &Path,
    stop: &AtomicBool,
    connection: &Mutex<Option<UnixStream>>,
) {
    let name = export.target.name().to_string();
    while !stop.load(Ordering::Acquire) {
        if !readable(&listener, Duration::from_millis(200)) {
            continue;
        }
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                warn!(export = %name, error = %e, "accept failed");
                // e.g. out of file descriptors: do not spin.
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let started = BlkBackend::new(export.clone())
            .map(Arc::new)
            .and_then(Connection::new)
            .and_then(|conn| Ok((conn, stream.try_clone()?)));
        let (conn, control) = match started {
            Ok(v) => v,
            Err(e) => {
                error!(export = %name, error = %e, "cannot set up the connection");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let conn = Arc::new(std::sync::Mutex::new(conn));
        let mut handler = BackendReqHandler::from_stream(stream, conn.clone());
        Stats::add(&export.stats.connections, 1);
        info!(export = %name, socket = %path.display(), "frontend connected");
        *connection.lock() = Some(control);
        if stop.load(Ordering::Acquire) {
            if let Some(s) = connection.lock().as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        loop {
            match handler.handle_request() {
                Ok(()) => {}
                Err(
                    VhostUserError::Disconnected
                    | VhostUserError::PartialMessage
                    | VhostUserError::SocketBroken(_),
                ) => {
                    info!(export = %name, "frontend disconnected");
                    break;
                }
                Err(e) => {
                    warn!(export = %name, error = %e, "connection ended with an error");
                    break;
                }
            }
        }
        *connection.lock() = None;
        let mut c = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        c.stop();
    }
}
