//! The guard trims a fully re-sent update to its delete set without yrs
//! (`proto::yjs::update::delete_set_update`); the bytes must be exactly what
//! yrs 0.28.1 writes for `[0] + Update::decode_v1(u).delete_set().encode_v1()`,
//! which is what the shard stored before the guard moved to proto.

use proto::yjs::lib0::Encoder;
use proto::yjs::update::delete_set_update;
use proto::yjs::validate::{validate_update_v1, Limits};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

fn yrs_delete_set_update(update: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8];
    u.extend_from_slice(
        &Update::decode_v1(update)
            .expect("valid")
            .delete_set()
            .encode_v1(),
    );
    u
}

fn assert_same(update: &[u8]) {
    assert!(validate_update_v1(update, &Limits::default()).is_ok());
    assert_eq!(
        delete_set_update(update).expect("valid"),
        yrs_delete_set_update(update),
        "{update:02x?}"
    );
}

/// xorshift64*
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn documents_edited_by_several_clients() {
    let mut rng = Rng(0x5EED);
    let mut with_deletes = 0;
    for round in 0..200 {
        let clients: Vec<Doc> = (0..1 + round % 5)
            .map(|i| Doc::with_client_id(1 + rng.next() % (1 << 32) + i as u64))
            .collect();
        let merged = Doc::with_client_id(999);
        for _ in 0..20 {
            let c = &clients[(rng.next() % clients.len() as u64) as usize];
            let text = c.get_or_insert_text("t");
            // Bring the client up to date, then edit.
            let state = merged
                .transact()
                .encode_diff_v1(&c.transact().state_vector());
            c.transact_mut()
                .apply_update(Update::decode_v1(&state).expect("valid"))
                .expect("applies");
            let len = text.len(&c.transact());
            let mut txn = c.transact_mut();
            if len > 2 && rng.next() & 1 == 0 {
                let at = (rng.next() % u64::from(len - 1)) as u32;
                let n = 1 + (rng.next() % u64::from((len - at).min(3))) as u32;
                text.remove_range(&mut txn, at, n);
            } else {
                let at = (rng.next() % u64::from(len + 1)) as u32;
                text.insert(&mut txn, at, "xyz");
            }
            drop(txn);
            let diff = c
                .transact()
                .encode_diff_v1(&merged.transact().state_vector());
            merged
                .transact_mut()
                .apply_update(Update::decode_v1(&diff).expect("valid"))
                .expect("applies");
        }
        let full = merged
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_same(&full);
        if yrs_delete_set_update(&full).len() > 2 {
            with_deletes += 1;
        }
    }
    assert!(with_deletes > 100, "{with_deletes}");
}

#[test]
fn handcrafted_delete_sets() {
    let ds = |clients: &[(u64, &[(u64, u64)])]| {
        let mut e = Encoder::new();
        e.write_u8(0);
        e.write_var_u64(clients.len() as u64);
        for (client, ranges) in clients {
            e.write_var_u64(*client);
            e.write_var_u64(ranges.len() as u64);
            for (clock, len) in *ranges {
                e.write_var_u64(*clock);
                e.write_var_u64(*len);
            }
        }
        e.into_vec()
    };
    // yjs order (descending clients), adjacent ranges, a client with no ranges, big ids.
    assert_same(&ds(&[(300, &[(0, 2), (2, 1), (9, 4)]), (7, &[(1, 1)])]));
    assert_same(&ds(&[(5, &[]), (4, &[(0, 1)])]));
    assert_same(&ds(&[
        ((1 << 53) - 1, &[(i32::MAX as u64 - 1, 1)]),
        (0, &[(0, 1)]),
    ]));
    // Overlong varints come out canonical, as yrs writes them.
    assert_same(&[0, 2, 9, 0x81, 0x00, 0x80, 0x00, 0x02, 3, 0]);
}
