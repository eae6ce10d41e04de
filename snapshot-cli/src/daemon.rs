//! A client of cowstored's control socket (one JSON request per line, one
//! JSON answer per line; see docs/operations.md).
//!
//! Every call has a deadline: a daemon that hangs must never hang the
//! snapshot manager past the barrier's timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Longest answer line accepted: listings of many exports fit easily.
const MAX_ANSWER_BYTES: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cowstored at {socket}: cannot connect: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("cowstored at {socket}: no answer within {timeout_ms} ms ({source})")]
    Timeout {
        socket: PathBuf,
        timeout_ms: u64,
        source: std::io::Error,
    },
    #[error("cowstored at {socket}: connection failed: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("cowstored at {socket}: closed the connection without answering")]
    Closed { socket: PathBuf },
    #[error("cowstored at {socket}: malformed answer: {why}")]
    Malformed { socket: PathBuf, why: String },
    #[error("cowstored at {socket}: {error}")]
    Refused { socket: PathBuf, error: String },
}

/// One connection to one daemon.
pub struct DaemonClient {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
}

impl DaemonClient {
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, DaemonError> {
        let socket = socket.to_path_buf();
        let stream = UnixStream::connect(&socket).map_err(|source| DaemonError::Connect {
            socket: socket.clone(),
            source,
        })?;
        let io = |source| DaemonError::Io {
            socket: socket.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(DaemonClient {
            socket,
            reader: BufReader::new(stream),
            writer,
            timeout,
        })
    }

    /// Sends one request and returns the answer's fields (without `ok`).
    pub fn call(&mut self, request: &Value) -> Result<Value, DaemonError> {
        let io_err = |source: std::io::Error, me: &Self| {
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                DaemonError::Timeout {
                    socket: me.socket.clone(),
                    timeout_ms: u64::try_from(me.timeout.as_millis()).unwrap_or(u64::MAX),
                    source,
                }
            } else {
                DaemonError::Io {
                    socket: me.socket.clone(),
                    source,
                }
            }
        };
        let mut line = request.to_string();
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            return Err(io_err(e, self));
        }
        let mut answer = String::new();
        let read = (&mut self.reader)
            .take(MAX_ANSWER_BYTES)
            .read_line(&mut answer);
        match read {
            Err(e) => return Err(io_err(e, self)),
            Ok(0) => {
                return Err(DaemonError::Closed {
                    socket: self.socket.clone(),
                })
            }
            Ok(_) => {}
        }
        let value: Value =
            serde_json::from_str(answer.trim()).map_err(|e| DaemonError::Malformed {
                socket: self.socket.clone(),
                why: e.to_string(),
            })?;
        match value.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(value),
            Some(false) => Err(DaemonError::Refused {
                socket: self.socket.clone(),
                error: value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("(no reason given)")
                    .to_string(),
            }),
            None => Err(DaemonError::Malformed {
                socket: self.socket.clone(),
                why: "no \"ok\" field".into(),
            }),
        }
    }
}
