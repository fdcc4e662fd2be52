//! Password hashing with argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane) on a
//! small pool of dedicated threads. Shards only enqueue and await: a login storm
//! queues here, it never stalls a shard. The queue is bounded; past it callers get
//! `HashError::Busy` and answer 503 rather than pile up memory.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use crossbeam_channel::{bounded, Sender, TrySendError};
use futures_channel::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing is saturated")]
    Busy,
    #[error("password hashing failed")]
    Failed,
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, HashError>>,
    },
    Verify {
        password: String,
        hash: Option<String>,
        reply: oneshot::Sender<bool>,
    },
}

pub struct PasswordPool {
    jobs: Sender<Job>,
}

impl PasswordPool {
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, rx) = bounded::<Job>(queue.max(1));
        // Verifying an unknown user's password against this keeps "no such user" and
        // "wrong password" equally slow.
        let decoy =
            hash(&format!("decoy-{}", rand::random::<u64>())).map_err(std::io::Error::other)?;
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let decoy = decoy.clone();
            std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    for job in rx {
                        match job {
                            Job::Hash { password, reply } => {
                                let _ = reply.send(hash(&password));
                            }
                            Job::Verify {
                                password,
                                hash,
                                reply,
                            } => {
                                let ok = verify(&password, hash.as_deref().unwrap_or(&decoy));
                                let _ = reply.send(ok && hash.is_some());
                            }
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Hashes waiting for a thread.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        rx.await.map_err(|_| HashError::Failed)?
    }

    /// `hash` is `None` for an unknown user: the answer is `false`, after the same work.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            hash,
            reply,
        })?;
        rx.await.map_err(|_| HashError::Failed)
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => HashError::Busy,
            TrySendError::Disconnected(_) => HashError::Failed,
        })
    }
}

fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| HashError::Failed)
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters() {
        let h = hash("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[test]
    fn pool_verifies_and_refuses_unknown_users() {
        let pool = PasswordPool::new(1, 4).expect("pool");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let h = pool.hash("password123".into()).await.expect("hash");
            assert!(pool
                .verify("password123".into(), Some(h.clone()))
                .await
                .expect("verify"));
            assert!(!pool
                .verify("password124".into(), Some(h))
                .await
                .expect("verify"));
            assert!(!pool
                .verify("password123".into(), None)
                .await
                .expect("verify"));
        });
    }
}
