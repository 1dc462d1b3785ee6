//! Group commit for REST submissions. Every request used to open its own transaction, so the
//! gateway paid one commit (an fsync, and PostgreSQL's commit-time NOTIFY lock) per request.
//! Handlers now hand their validated submission to one committer task, which takes whatever
//! has queued up while the previous transaction committed (up to `max_batch`), records it all
//! in one transaction through [`submit::submit_batch`] and answers each handler. Under no load
//! a request waits for nothing but its own transaction; under load the batch grows by itself.
//!
//! A batch that fails as a whole is retried one submission per transaction, so one bad
//! submission cannot refuse the others.

use hcp_db::Publish;
use hcp_events::payload::SubmissionSource;
use hcp_events::{Tier, WorkloadRequest};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::metrics_names as m;
use crate::submit::{self, Submission, SubmitError, Submitted};

/// A validated submission that owns its parts (it crosses to the committer task).
#[derive(Debug, Clone)]
pub struct OwnedSubmission {
    /// The request (tenant id set, validated).
    pub request: WorkloadRequest,
    /// The tenant's tier now.
    pub tier: Tier,
    /// REST or Kafka.
    pub source: SubmissionSource,
    /// The idempotency key within the tenant, if any.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request as the client sent it.
    pub fingerprint: [u8; 32],
}

impl OwnedSubmission {
    fn borrow(&self) -> Submission<'_> {
        Submission {
            request: &self.request,
            tier: self.tier,
            source: self.source,
            idempotency_key: self.idempotency_key.as_deref(),
            fingerprint: self.fingerprint,
        }
    }
}

struct Job {
    submission: OwnedSubmission,
    publish: Publish,
    reply: oneshot::Sender<Result<Submitted, SubmitError>>,
}

/// The handle handlers submit through; cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the committer on the current runtime. It stops once every handle is dropped.
    pub fn start(pool: PgPool, workloads_topic: String, max_batch: usize) -> Self {
        let max_batch = max_batch.max(1);
        let (jobs, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(pool, workloads_topic, max_batch, rx));
        Self { jobs }
    }

    /// Records `submission` in the next group transaction and waits for its commit. The trace
    /// context of the calling span travels with it.
    pub async fn submit(&self, submission: OwnedSubmission) -> Result<Submitted, SubmitError> {
        let (traceparent, tracestate) = hcp_bus::trace::current_trace_headers();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            submission,
            publish: Publish {
                topic: None,
                traceparent,
                tracestate,
            },
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(SubmitError::Unavailable("the committer has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(SubmitError::Unavailable("the committer has stopped".into())))
    }
}

async fn run(pool: PgPool, topic: String, max_batch: usize, mut rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        for job in &mut jobs {
            job.publish.topic = Some(topic.clone());
        }
        metrics::histogram!(m::GROUP_COMMIT_SIZE).record(jobs.len() as f64);
        match commit(&pool, &jobs).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(e) if jobs.len() == 1 => {
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = jobs.len(), "group commit failed; retrying one by one");
                for job in jobs.drain(..) {
                    let outcome = match commit(&pool, std::slice::from_ref(&job)).await {
                        Ok(mut o) => o
                            .pop()
                            .unwrap_or_else(|| Err(SubmitError::Unavailable("no outcome".into()))),
                        Err(e) => Err(e),
                    };
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }
}

async fn commit(
    pool: &PgPool,
    jobs: &[Job],
) -> Result<Vec<Result<Submitted, SubmitError>>, SubmitError> {
    let batch: Vec<(Submission<'_>, Publish)> = jobs
        .iter()
        .map(|j| (j.submission.borrow(), j.publish.clone()))
        .collect();
    let mut tx = pool.begin().await?;
    let outcomes = submit::submit_batch(&mut tx, &batch).await?;
    tx.commit().await?;
    Ok(outcomes)
}
