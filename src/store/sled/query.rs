//! Runs and deliveries queries over the index trees (see `index.rs`):
//! walk the index newest first, load each candidate run and check the whole
//! query against it, stop at the limit.

use super::backend;
use super::index::{
    after_route, id_num, needs_routes, plan_deliveries, plan_runs, route_of, routes_start,
    DeliveryPlan, IndexMeta, Plan, DELIVERY_SUFFIX, ID_LEN,
};
use super::trees::{IndexTree, StaleKey, Trees};
use crate::run::{Run, RunId};
use crate::store::{DeliveryQuery, RunQuery, StoreError};

/// One sorted source of candidate run ids.
///
/// Every seek walks each prefix again rather than remembering its last
/// answer: a run whose status or phase changes while a query walks moves
/// its key from one prefix to another (new key first, old key last), and a
/// remembered answer of the prefix it moved into would hide it, so a run
/// could vanish from a route's listing while it changed state (seen in
/// `tests/admin.rs` paging under load). Each seek is one short reverse range
/// read per prefix.
enum Stream<'a> {
    /// Keys `prefix ++ id` in a tree, for any of these prefixes.
    Prefixes(&'a sled::Tree, &'a [Vec<u8>]),
    /// Ids collected up front, ascending, with the key each came from.
    Ids(Vec<(u128, Vec<u8>)>),
}

/// The largest id after `prefix` within `lo..=hi`.
fn seek_prefix(
    tree: &sled::Tree,
    prefix: &[u8],
    lo: u128,
    hi: u128,
) -> Result<Option<u128>, StoreError> {
    let start = [prefix, &lo.to_be_bytes()[..]].concat();
    let end = [prefix, &hi.to_be_bytes()[..]].concat();
    for item in tree.range(start..=end).rev() {
        let (k, _) = item.map_err(backend)?;
        // A longer key belongs to another value sharing this prefix.
        if k.len() == prefix.len() + ID_LEN {
            return Ok(Some(id_from(&k[prefix.len()..])));
        }
    }
    Ok(None)
}

impl Stream<'_> {
    /// The largest id of this stream within `lo..=hi`.
    fn seek(&mut self, lo: u128, hi: u128) -> Result<Option<u128>, StoreError> {
        match self {
            Stream::Prefixes(tree, prefixes) => {
                let mut best = None;
                for p in prefixes.iter() {
                    best = best.max(seek_prefix(tree, p, lo, hi)?);
                }
                Ok(best)
            }
            Stream::Ids(ids) => {
                let below = ids.partition_point(|(id, _)| *id <= hi);
                Ok(ids[..below]
                    .last()
                    .map(|(id, _)| *id)
                    .filter(|id| *id >= lo))
            }
        }
    }

    /// This stream's keys for `id` present in the index (to check them
    /// against the run).
    fn keys_of(&self, id: u128) -> Result<Vec<Vec<u8>>, StoreError> {
        match self {
            Stream::Prefixes(tree, prefixes) => {
                let mut found = Vec::new();
                for p in prefixes.iter() {
                    let k = [p, &id.to_be_bytes()[..]].concat();
                    if tree.contains_key(&k).map_err(backend)? {
                        found.push(k);
                    }
                }
                Ok(found)
            }
            Stream::Ids(ids) => Ok(ids
                .iter()
                .filter(|(i, _)| *i == id)
                .map(|(_, k)| k.clone())
                .collect()),
        }
    }
}

fn id_from(bytes: &[u8]) -> u128 {
    let mut b = [0u8; ID_LEN];
    b.copy_from_slice(&bytes[..ID_LEN]);
    u128::from_be_bytes(b)
}

fn run_id(n: u128) -> RunId {
    RunId::from_bytes(n.to_be_bytes())
}

/// The run `id`, if stored and decodable.
fn load(trees: &Trees, id: u128) -> Result<Option<Run>, StoreError> {
    trees.load(run_id(id))
}

/// Runs matching `q`, newest first; index keys found stale go to `stale`.
pub(super) fn list_runs(
    trees: &Trees,
    q: &RunQuery,
    stale: &mut Vec<StaleKey>,
) -> Result<Vec<Run>, StoreError> {
    let mut out = Vec::new();
    if q.limit == 0 {
        return Ok(out);
    }
    let plan = if trees.indexed {
        let routes = if needs_routes(q) {
            routes_in(&trees.idx_runs)?
        } else {
            Vec::new()
        };
        plan_runs(q, &routes)
    } else {
        Plan::Scan {
            lo: 0,
            hi: id_num(q.before.unwrap_or(RunId::MAX))
                .saturating_sub(u128::from(q.before.is_some())),
        }
    };
    let (lo, mut hi, prefixes, any_route) = match plan {
        Plan::Empty => return Ok(out),
        Plan::Scan { lo, hi } => {
            let range = trees.runs.range(lo.to_be_bytes()..=hi.to_be_bytes());
            for item in range.rev() {
                let (k, v) = item.map_err(backend)?;
                let Some(run) = trees.with_state(&k, &v)? else {
                    continue;
                };
                if q.matches(&run) {
                    out.push(run);
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        Plan::Index {
            lo,
            hi,
            streams,
            any_route_delivery_id,
        } => (lo, hi, streams, any_route_delivery_id),
    };
    let mut streams: Vec<Stream> = Vec::new();
    if let Some(p) = &any_route {
        let mut ids = Vec::new();
        for item in trees.idx_runs.scan_prefix(p) {
            let (k, _) = item.map_err(backend)?;
            if k.len() >= p.len() + ID_LEN {
                ids.push((id_from(&k[k.len() - ID_LEN..]), k.to_vec()));
            }
        }
        ids.sort();
        streams.push(Stream::Ids(ids));
    }
    streams.extend(
        prefixes
            .iter()
            .map(|p| Stream::Prefixes(&trees.idx_runs, p)),
    );

    if let [Stream::Prefixes(tree, [prefix])] = streams.as_slice() {
        // One stream (route and status, the common case): one range walk.
        let start = [prefix, &lo.to_be_bytes()[..]].concat();
        let end = [prefix, &hi.to_be_bytes()[..]].concat();
        for item in tree.range(start..=end).rev() {
            let (k, _) = item.map_err(backend)?;
            if k.len() != prefix.len() + ID_LEN {
                continue;
            }
            let id = id_from(&k[prefix.len()..]);
            match load(trees, id)? {
                Some(run) if q.matches(&run) => out.push(run),
                run => note_stale(run.as_ref(), id, &streams, stale)?,
            }
            if out.len() >= q.limit {
                break;
            }
        }
        return Ok(out);
    }
    // Leapfrog: the newest id every stream holds, then the next below it.
    'next: while let Some(mut target) = streams[0].seek(lo, hi)? {
        let mut agree = 1;
        let mut i = 1;
        while agree < streams.len() {
            let n = streams.len();
            let Some(c) = streams[i % n].seek(lo, target)? else {
                break 'next;
            };
            if c == target {
                agree += 1;
            } else {
                target = c;
                agree = 1;
            }
            i += 1;
        }
        match load(trees, target)? {
            Some(run) if q.matches(&run) => out.push(run),
            run => note_stale(run.as_ref(), target, &streams, stale)?,
        }
        if out.len() >= q.limit || target == 0 {
            break;
        }
        hi = target - 1;
    }
    Ok(out)
}

/// The routes that have runs in the index: one seek per route.
fn routes_in(tree: &sled::Tree) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut routes = Vec::new();
    let mut from = routes_start();
    while let Some(item) = tree.range(from..).next() {
        let (k, _) = item.map_err(backend)?;
        let Some(route) = route_of(&k) else {
            break;
        };
        from = after_route(route);
        routes.push(route.to_vec());
    }
    Ok(routes)
}

/// Records which of the streams' keys for `id` disagree with its run.
fn note_stale(
    run: Option<&Run>,
    id: u128,
    streams: &[Stream],
    stale: &mut Vec<StaleKey>,
) -> Result<(), StoreError> {
    let keys = run.map(|r| IndexMeta::of(r).keys()).unwrap_or_default();
    for s in streams {
        for key in s.keys_of(id)? {
            if !keys.runs.contains(&key) {
                stale.push(StaleKey {
                    id: run_id(id),
                    tree: IndexTree::Runs,
                    key,
                });
            }
        }
    }
    Ok(())
}

/// Deliveries matching `q`, newest run first (then highest index first).
pub(super) fn list_deliveries(
    trees: &Trees,
    q: &DeliveryQuery,
    stale: &mut Vec<StaleKey>,
) -> Result<Vec<(Run, u32)>, StoreError> {
    let plan = if trees.indexed {
        plan_deliveries(q)
    } else {
        DeliveryPlan::Scan
    };
    let mut out = Vec::new();
    if q.limit == 0 {
        return Ok(out);
    }
    let DeliveryPlan::Index { prefixes, lo, hi } = plan else {
        return scan_deliveries(trees, q);
    };
    let mut iters: Vec<_> = prefixes
        .iter()
        .map(|p| {
            let start = [p.as_slice(), &lo].concat();
            let range = match hi {
                Some(h) => trees
                    .idx_deliveries
                    .range(start..[p.as_slice(), &h].concat()),
                None => trees
                    .idx_deliveries
                    .range(start..=[p.as_slice(), &[0xff; DELIVERY_SUFFIX]].concat()),
            };
            range.rev().peekable()
        })
        .collect();
    let mut cached: Option<(u128, Option<Run>)> = None;
    loop {
        // The stream whose head is newest; keys of another length belong
        // to a route sharing this prefix and are passed over.
        let mut best: Option<(usize, [u8; DELIVERY_SUFFIX], Vec<u8>)> = None;
        for (n, it) in iters.iter_mut().enumerate() {
            let prefix_len = prefixes[n].len();
            while let Some(item) = it.peek() {
                match item {
                    Ok((k, _)) if k.len() != prefix_len + DELIVERY_SUFFIX => {
                        it.next();
                    }
                    Ok((k, _)) => {
                        let mut suffix = [0u8; DELIVERY_SUFFIX];
                        suffix.copy_from_slice(&k[prefix_len..]);
                        if best.as_ref().is_none_or(|(_, b, _)| suffix > *b) {
                            best = Some((n, suffix, k.to_vec()));
                        }
                        break;
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
        }
        let Some((n, suffix, key)) = best else {
            break;
        };
        iters[n].next();
        let id = id_from(&suffix);
        let index = u32::from_be_bytes([suffix[16], suffix[17], suffix[18], suffix[19]]);
        if cached.as_ref().is_none_or(|(c, _)| *c != id) {
            cached = Some((id, load(trees, id)?));
        }
        let run = cached.as_ref().and_then(|(_, r)| r.as_ref());
        match run {
            Some(r) if q.matches(r, index) => {
                out.push((r.clone(), index));
                if out.len() >= q.limit {
                    break;
                }
            }
            Some(r) if !q.matches_run(r) => {}
            _ => {
                let keys = run.map(|r| IndexMeta::of(r).keys()).unwrap_or_default();
                if !keys.deliveries.contains(&key) {
                    stale.push(StaleKey {
                        id: run_id(id),
                        tree: IndexTree::Deliveries,
                        key,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Deliveries by walking every run (states the index does not hold).
fn scan_deliveries(trees: &Trees, q: &DeliveryQuery) -> Result<Vec<(Run, u32)>, StoreError> {
    let iter = match q.before {
        // The cursor's own run may still have lower indexes to show.
        Some((b, _)) => trees.runs.range(..=b.to_bytes().to_vec()),
        None => trees.runs.iter(),
    };
    let mut out = Vec::new();
    for item in iter.rev() {
        let (k, v) = item.map_err(backend)?;
        let Some(run) = trees.with_state(&k, &v)? else {
            continue;
        };
        if !q.matches_run(&run) {
            continue;
        }
        for i in (0..run.deliveries().len() as u32).rev() {
            if q.matches(&run, i) {
                out.push((run.clone(), i));
                if out.len() >= q.limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}
