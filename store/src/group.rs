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
        let (merged, owner) = coalesce(requests);
        let n = merged.len();
        let merged_results = match commit(merged).await {
            Ok(r) => r,
            // The transaction did not commit: nothing of this batch is durable, nothing is acked.
            Err(e) => vec![Err(e); n],
        };
        let results: Vec<Result<(), StoreError>> = owner
            .iter()
            .map(|&m| {
                merged_results
                    .get(m)
                    .cloned()
                    .unwrap_or_else(|| Err(StoreError::Unavailable("missing result".into())))
            })
            .collect();
        let mut it = results.into_iter();
        for (len, reply) in replies {
            let _ = reply.send(it.by_ref().take(len).collect());
        }
    }
}

/// Joins requests that continue the previous request on the same stream (same epoch, next seq)
/// into one, so a stream with many small appends queued costs one row in each statement of the
/// commit instead of one commit round per request. Returns the joined requests and, for each input
/// request, the index of the joined request that carries it (its result is that one's result: the
/// joined request commits or fails as a whole, as its parts would have in sequence).
pub(crate) fn coalesce(requests: Vec<AppendRequest>) -> (Vec<AppendRequest>, Vec<usize>) {
    use std::collections::HashMap;
    let mut merged: Vec<AppendRequest> = Vec::with_capacity(requests.len());
    let mut owner = Vec::with_capacity(requests.len());
    let mut latest: HashMap<crate::StreamId, usize> = HashMap::new();
    for req in requests {
        if let Some(&m) = latest.get(&req.stream) {
            let prev = &mut merged[m];
            if prev.epoch == req.epoch
                && !req.events.is_empty()
                && prev.first_seq.0 + prev.events.len() as u64 == req.first_seq.0
            {
                prev.events.extend(req.events);
                owner.push(m);
                continue;
            }
        }
        latest.insert(req.stream.clone(), merged.len());
        owner.push(merged.len());
        merged.push(req);
    }
    (merged, owner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::{Bytes, DocumentUpdatedV1};
    use proto::{DocId, Epoch, EventPayload, NewEvent, Seq, StreamId, UserId};

    fn req(doc: &str, epoch: u64, first: u64, n: usize) -> AppendRequest {
        AppendRequest {
            stream: StreamId::Doc(DocId::parse(doc).expect("id")),
            epoch: Epoch(epoch),
            first_seq: Seq(first),
            events: (0..n)
                .map(|_| NewEvent {
                    id: uuid::Uuid::now_v7(),
                    actor: UserId::parse("u").expect("id"),
                    ts: 0,
                    trace: None,
                    payload: EventPayload::DocumentUpdated(DocumentUpdatedV1 {
                        update: Bytes(vec![0, 0]),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn contiguous_requests_on_a_stream_are_joined() {
        let (m, owner) = coalesce(vec![
            req("a", 1, 1, 1),
            req("b", 1, 7, 2),
            req("a", 1, 2, 2),
            req("a", 1, 4, 1),
            req("b", 1, 9, 1),
        ]);
        assert_eq!(owner, vec![0, 1, 0, 0, 1]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].first_seq, m[0].events.len()), (Seq(1), 4));
        assert_eq!((m[1].first_seq, m[1].events.len()), (Seq(7), 3));
    }

    #[test]
    fn gaps_epoch_changes_and_empty_requests_stay_apart_in_order() {
        let (m, owner) = coalesce(vec![
            req("a", 1, 1, 1),
            req("a", 1, 3, 1), // gap: its own request (the store refuses it)
            req("a", 1, 4, 1), // continues the gapped one, not the first
            req("a", 2, 5, 1), // new epoch
            req("a", 2, 6, 0), // empty
        ]);
        assert_eq!(owner, vec![0, 1, 1, 2, 3]);
        assert_eq!(
            m.iter()
                .map(|r| (r.epoch.0, r.first_seq.0, r.events.len()))
                .collect::<Vec<_>>(),
            vec![(1, 1, 1), (1, 3, 2), (2, 5, 1), (2, 6, 0)]
        );
    }
}
