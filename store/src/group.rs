//! Group commit, shared by the SQL backends: one writer task takes every append call waiting in its
//! queue and commits them together, so many small appends share one durable flush.

use std::future::Future;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{AppendRequest, StoreError};

/// One `append` call: its requests and where to send their results.
pub(crate) type Job = (
    Vec<AppendRequest>,
    oneshot::Sender<Vec<Result<(), StoreError>>>,
);

/// Runs until every sender is dropped. `commit` gets the requests of up to `max_batch` calls (shared,
/// so a failed joined request can be split again without copying every batch) and returns one result
/// per request, or an error meaning nothing of the batch was committed.
pub(crate) async fn writer_loop<F, Fut>(
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    mut commit: F,
) where
    F: FnMut(Arc<Vec<AppendRequest>>) -> Fut,
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
        let (merged, owner, parts) = coalesce(requests);
        let merged = Arc::new(merged);
        let n = merged.len();
        let merged_results = match commit(merged.clone()).await {
            Ok(r) => r,
            // The transaction did not commit: nothing of this batch is durable, nothing is acked.
            Err(e) => vec![Err(e); n],
        };
        // A joined request that failed by itself (a retried part, a duplicate id, a seq conflict)
        // must not take its other parts down: commit those parts again unjoined, each with its own
        // result, exactly as if they had never been joined.
        let mut part_results: std::collections::HashMap<usize, Vec<Result<(), StoreError>>> =
            std::collections::HashMap::new();
        {
            let mut retry = Vec::new();
            let mut retried = Vec::new();
            for (m, res) in merged_results.iter().enumerate() {
                if parts[m].len() > 1
                    && matches!(res, Err(e) if !matches!(e, StoreError::Unavailable(_)))
                {
                    retry.extend(split(&merged[m], &parts[m]));
                    retried.push(m);
                }
            }
            if !retry.is_empty() {
                let count = retry.len();
                let mut results = match commit(Arc::new(retry)).await {
                    Ok(r) => r,
                    Err(e) => vec![Err(e); count],
                }
                .into_iter();
                for m in retried {
                    part_results.insert(m, results.by_ref().take(parts[m].len()).collect());
                }
            }
        }
        let results: Vec<Result<(), StoreError>> = owner
            .iter()
            .map(|&(m, k)| {
                if let Some(r) = part_results.get(&m).and_then(|r| r.get(k)) {
                    return r.clone();
                }
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

/// What [`coalesce`] returns: joined requests, (joined index, part number) per input request, and
/// the event count of each part per joined request.
pub(crate) type Coalesced = (Vec<AppendRequest>, Vec<(usize, usize)>, Vec<Vec<usize>>);

/// Joins requests that continue the previous request on the same stream (same epoch, next seq)
/// into one, so a stream with many small appends queued costs one row in each statement of the
/// commit instead of one commit round per request. Returns the joined requests; for each input
/// request, the joined request that carries it and its part number there; and for each joined
/// request, the event count of each part (to split it again, see `split`).
pub(crate) fn coalesce(requests: Vec<AppendRequest>) -> Coalesced {
    use std::collections::HashMap;
    let mut merged: Vec<AppendRequest> = Vec::with_capacity(requests.len());
    let mut owner = Vec::with_capacity(requests.len());
    let mut parts: Vec<Vec<usize>> = Vec::with_capacity(requests.len());
    let mut latest: HashMap<crate::StreamId, usize> = HashMap::new();
    for req in requests {
        if let Some(&m) = latest.get(&req.stream) {
            let prev = &mut merged[m];
            if prev.epoch == req.epoch
                && !req.events.is_empty()
                && !prev.events.is_empty()
                && prev.first_seq.0 + prev.events.len() as u64 == req.first_seq.0
            {
                owner.push((m, parts[m].len()));
                parts[m].push(req.events.len());
                prev.events.extend(req.events);
                continue;
            }
        }
        latest.insert(req.stream.clone(), merged.len());
        owner.push((merged.len(), 0));
        parts.push(vec![req.events.len()]);
        merged.push(req);
    }
    (merged, owner, parts)
}

/// Splits a joined request back into its parts (event counts `lens`).
fn split(joined: &AppendRequest, lens: &[usize]) -> Vec<AppendRequest> {
    let mut out = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for &len in lens {
        out.push(AppendRequest {
            stream: joined.stream.clone(),
            epoch: joined.epoch,
            first_seq: proto::Seq(joined.first_seq.0 + at as u64),
            events: joined.events[at..at + len].to_vec(),
        });
        at += len;
    }
    out
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
        let input = vec![
            req("a", 1, 1, 1),
            req("b", 1, 7, 2),
            req("a", 1, 2, 2),
            req("a", 1, 4, 1),
            req("b", 1, 9, 1),
        ];
        let (m, owner, parts) = coalesce(input.clone());
        assert_eq!(owner, vec![(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)]);
        assert_eq!(parts, vec![vec![1, 2, 1], vec![2, 1]]);
        // Split again, the parts are the original requests.
        let again = split(&m[0], &parts[0]);
        let originals = [&input[0], &input[2], &input[3]];
        for (a, b) in again.iter().zip(originals) {
            assert_eq!((a.first_seq, a.events.len()), (b.first_seq, b.events.len()));
            assert_eq!(
                a.events.iter().map(|e| e.id).collect::<Vec<_>>(),
                b.events.iter().map(|e| e.id).collect::<Vec<_>>()
            );
        }
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].first_seq, m[0].events.len()), (Seq(1), 4));
        assert_eq!((m[1].first_seq, m[1].events.len()), (Seq(7), 3));
    }

    #[test]
    fn gaps_epoch_changes_and_empty_requests_stay_apart_in_order() {
        let (m, owner, _) = coalesce(vec![
            req("a", 1, 1, 1),
            req("a", 1, 3, 1), // gap: its own request (the store refuses it)
            req("a", 1, 4, 1), // continues the gapped one, not the first
            req("a", 2, 5, 1), // new epoch
            req("a", 2, 6, 0), // empty
        ]);
        assert_eq!(owner, vec![(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]);
        assert_eq!(
            m.iter()
                .map(|r| (r.epoch.0, r.first_seq.0, r.events.len()))
                .collect::<Vec<_>>(),
            vec![(1, 1, 1), (1, 3, 2), (2, 5, 1), (2, 6, 0)]
        );
    }
}
