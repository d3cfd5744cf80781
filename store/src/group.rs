//! Group commit, shared by the SQL backends: one writer task takes every append call waiting in its
//! queue and commits them together, so many small appends share one durable flush.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::{AppendRequest, StoreError};

/// One `append` call: its requests and where to send their results.
pub(crate) type Job = (
    Vec<AppendRequest>,
    oneshot::Sender<Vec<Result<(), StoreError>>>,
);

/// Runs until every sender is dropped. `commit` gets the flattened requests of up to `max_batch` calls
/// and returns one result per request, or an error meaning nothing of the batch was committed.
pub(crate) async fn writer_loop<F, Fut>(
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    mut commit: F,
) where
    F: FnMut(Vec<AppendRequest>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<(), StoreError>>, StoreError>>,
{
    let mut pending: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
        pending.push(first);
        while pending.len() < max_batch.max(1) {
            match rx.try_recv() {
                Ok(more) => pending.push(more),
                Err(_) => break,
            }
        }
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for (batch, reply) in pending.drain(..) {
            replies.push((batch.len(), reply));
            requests.extend(batch);
        }
        let n = requests.len();
        let results = match commit(requests).await {
            Ok(r) => r,
            // The transaction did not commit: nothing of this batch is durable, nothing is acked.
            Err(e) => vec![Err(e); n],
        };
        let mut it = results.into_iter();
        for (len, reply) in replies {
            let _ = reply.send(it.by_ref().take(len).collect());
        }
    }
}

/// Sends one `append` call to a writer task and waits for its results.
pub(crate) async fn submit(
    writer: &mpsc::Sender<Job>,
    batch: Vec<AppendRequest>,
) -> Vec<Result<(), StoreError>> {
    let n = batch.len();
    if n == 0 {
        return Vec::new();
    }
    let closed = || vec![Err(StoreError::Unavailable("writer stopped".into())); n];
    let (tx, rx) = oneshot::channel();
    if writer.send((batch, tx)).await.is_err() {
        return closed();
    }
    rx.await.unwrap_or_else(|_| closed())
}
