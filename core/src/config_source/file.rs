//! File mode: a YAML file (tests, the sandbox, running a proxy by hand), polled for changes.
//! The first read must succeed (there is no last good config yet); after that a file that is
//! unreadable or rejected is logged and counted, and the proxy keeps its last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::error;

#[derive(Debug, thiserror::Error)]
#[error("reading config file {path}: {source}")]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What a proxy makes of its config file.
pub trait FileConfig: Send + Sync + 'static {
    /// The validated config the proxy serves.
    type State: Send + Sync + 'static;
    type Error: std::fmt::Display + From<ReadError>;
    /// Parses and validates the file's contents; `generation` is the number they get if
    /// accepted (1 for the first, then one more per accepted change).
    fn parse(&self, path: &Path, bytes: &[u8], generation: u64)
        -> Result<Self::State, Self::Error>;
    /// A changed file was accepted and is about to be served (the proxy logs it).
    fn reloaded(&self, path: &Path, state: &Self::State, generation: u64);
    /// Every outcome, the first load included: `None` accepted, `Some(error)` kept out.
    /// Proxies count it in `ambit_config_reloads_total{result}`.
    fn outcome(&self, error: Option<&str>);
}

/// Polls `path` every `interval`.
pub struct FilePoller {
    pub path: PathBuf,
    pub interval: Duration,
}

fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError {
        path: path.to_path_buf(),
        source,
    })
}

impl FilePoller {
    /// Loads the file once (an error here is fatal), then polls it in a background task
    /// (needs a Tokio runtime) until the receiver is dropped.
    pub fn start<C: FileConfig>(
        self,
        config: C,
    ) -> Result<watch::Receiver<Arc<C::State>>, C::Error> {
        let mut last = read(&self.path)?;
        let mut generation = 1;
        let state = config.parse(&self.path, &last, generation)?;
        config.outcome(None);
        let (tx, rx) = watch::channel(Arc::new(state));
        tokio::spawn(async move {
            let mut unreadable = None;
            loop {
                tokio::time::sleep(self.interval).await;
                if tx.is_closed() {
                    return;
                }
                let bytes = match read(&self.path) {
                    Ok(b) => b,
                    Err(e) => {
                        // Once per distinct error, not once per poll.
                        let msg = e.to_string();
                        if unreadable.as_ref() != Some(&msg) {
                            error!(error = %msg, "config file unreadable; keeping last good config");
                            config.outcome(Some(&msg));
                            unreadable = Some(msg);
                        }
                        continue;
                    }
                };
                unreadable = None;
                if bytes == last {
                    continue;
                }
                last = bytes;
                match config.parse(&self.path, &last, generation + 1) {
                    Ok(state) => {
                        generation += 1;
                        config.reloaded(&self.path, &state, generation);
                        config.outcome(None);
                        tx.send_replace(Arc::new(state));
                    }
                    Err(e) => {
                        error!(error = %e, "config rejected; keeping last good config");
                        config.outcome(Some(&e.to_string()));
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A config file holding one number; odd numbers are rejected.
    #[derive(Default)]
    struct Numbers {
        outcomes: Mutex<Vec<Option<String>>>,
        reloads: Mutex<Vec<(u64, u64)>>,
    }

    #[derive(Debug)]
    struct NumberError(String);

    impl std::fmt::Display for NumberError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl From<ReadError> for NumberError {
        fn from(e: ReadError) -> Self {
            NumberError(e.to_string())
        }
    }

    impl FileConfig for Arc<Numbers> {
        type State = (u64, u64);
        type Error = NumberError;
        fn parse(
            &self,
            _: &Path,
            bytes: &[u8],
            generation: u64,
        ) -> Result<(u64, u64), NumberError> {
            let text = String::from_utf8_lossy(bytes);
            match text.trim().parse::<u64>() {
                Ok(n) if n % 2 == 0 => Ok((n, generation)),
                _ => Err(NumberError(format!("bad number {text:?}"))),
            }
        }
        fn reloaded(&self, _: &Path, state: &(u64, u64), generation: u64) {
            assert_eq!(state.1, generation);
            self.reloads.lock().unwrap().push(*state);
        }
        fn outcome(&self, error: Option<&str>) {
            self.outcomes
                .lock()
                .unwrap()
                .push(error.map(str::to_string));
        }
    }

    fn poller(dir: &Path) -> FilePoller {
        FilePoller {
            path: dir.join("n.txt"),
            interval: Duration::from_millis(10),
        }
    }

    /// Writes by rename, so a poll never sees a half-written file.
    fn put(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    async fn changed(rx: &mut watch::Receiver<Arc<(u64, u64)>>) -> (u64, u64) {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("no reload within 5s")
            .unwrap();
        **rx.borrow_and_update()
    }

    #[tokio::test]
    async fn first_load_errors_are_fatal() {
        let dir = std::env::temp_dir().join(format!("ambit-poll-fatal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let numbers = Arc::new(Numbers::default());
        let e = poller(&dir).start(numbers.clone()).unwrap_err();
        assert!(e.0.starts_with("reading config file "), "{e}");
        std::fs::write(dir.join("n.txt"), "3").unwrap();
        let e = poller(&dir).start(numbers.clone()).unwrap_err();
        assert_eq!(e.0, "bad number \"3\"");
        assert!(numbers.outcomes.lock().unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn bad_or_missing_file_keeps_the_last_good_config() {
        let dir = std::env::temp_dir().join(format!("ambit-poll-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.txt");
        put(&path, "2");
        let numbers = Arc::new(Numbers::default());
        let mut rx = poller(&dir).start(numbers.clone()).unwrap();
        assert_eq!(**rx.borrow_and_update(), (2, 1));
        // Rejected, then unreadable, each for several polls.
        put(&path, "3");
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx.has_changed().unwrap());
        put(&path, "4");
        // The accepted version is generation 2: rejected content does not use up a number.
        assert_eq!(changed(&mut rx).await, (4, 2));
        assert_eq!(*numbers.reloads.lock().unwrap(), vec![(4, 2)]);
        let outcomes = numbers.outcomes.lock().unwrap().clone();
        assert_eq!(outcomes.first(), Some(&None), "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&None), "{outcomes:?}");
        let errors: Vec<&String> = outcomes.iter().flatten().collect();
        // One per distinct failure, not one per poll.
        assert_eq!(errors.len(), 2, "{outcomes:?}");
        assert_eq!(errors[0], "bad number \"3\"");
        assert!(errors[1].starts_with("reading config file "), "{errors:?}");
        drop(rx);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
