//! The stored objects, the global resourceVersion counter, the bounded event history and
//! the registered watchers. Everything here runs under one mutex, in short critical sections.

use crate::error::ApiError;
use crate::resources::{Registry, ResourceKey, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::tokens::TokenInfo;
use crate::util::meta_mut;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub res: ResourceKey,
    /// "" for cluster-scoped objects.
    pub ns: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: EventType,
    pub old: Option<Arc<Value>>,
    pub obj: Arc<Value>,
}

/// What a watcher receives, in order.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    Event(EventType, Arc<Value>),
    Bookmark(u64),
}

#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub res: ResourceKey,
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, key: &ObjKey, obj: &Value) -> bool {
        key.res == self.res
            && self.ns.as_ref().is_none_or(|n| *n == key.ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// The event this watcher sees: objects moving into or out of the selection turn into
    /// ADDED / DELETED, as with the real server.
    fn translate(&self, ev: &Event) -> Option<WatchMsg> {
        if ev.key.res != self.res {
            return None;
        }
        let now = self.matches(&ev.key, &ev.obj);
        let before = ev.old.as_ref().is_some_and(|o| self.matches(&ev.key, o));
        let kind = match (ev.kind, before, now) {
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Deleted, _, false) => return None,
            (_, true, true) => EventType::Modified,
            (_, false, true) => EventType::Added,
            (_, true, false) => EventType::Deleted,
            (_, false, false) => return None,
        };
        Some(WatchMsg::Event(kind, ev.obj.clone()))
    }
}

struct WatcherSlot {
    id: u64,
    filter: WatchFilter,
    tx: mpsc::Sender<WatchMsg>,
    overflow: Arc<AtomicBool>,
}

/// Where a new watch starts.
pub enum WatchStart {
    /// Synthetic ADDED events for every current object (no or "0" resourceVersion).
    CurrentState,
    /// Every event after this resourceVersion.
    After(u64),
}

pub struct WatchRegistration {
    pub id: u64,
    pub rx: mpsc::Receiver<WatchMsg>,
    pub initial: Vec<WatchMsg>,
    pub overflow: Arc<AtomicBool>,
    pub rv: u64,
}

/// A removed object, queued for garbage collection and namespace bookkeeping.
pub(crate) struct Removed {
    pub key: ObjKey,
    pub uid: String,
    pub owners: Vec<String>,
    /// The removed object, kept only for CRDs (their type goes with them).
    pub crd: Option<Value>,
}

pub struct State {
    pub registry: Registry,
    pub(crate) objects: BTreeMap<ObjKey, Value>,
    pub(crate) uids: HashMap<String, ObjKey>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events at or below this resourceVersion are no longer in `history`.
    compacted: u64,
    watchers: Vec<WatcherSlot>,
    next_watch_id: u64,
    watch_buffer: usize,
    pub(crate) tokens: HashMap<String, TokenInfo>,
    pub(crate) gc_queue: VecDeque<Removed>,
}

impl State {
    pub fn new(history_limit: usize, watch_buffer: usize) -> Self {
        State {
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            uids: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
            next_watch_id: 1,
            watch_buffer: watch_buffer.max(1),
            tokens: HashMap::new(),
            gc_queue: VecDeque::new(),
        }
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    pub fn get_or_404(&self, rt: &ResourceType, key: &ObjKey) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.qualified(), &key.name))
    }

    pub fn list(
        &self,
        res: &ResourceKey,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, v)| {
                k.res == *res
                    && ns.is_none_or(|n| n == k.ns)
                    && labels.matches(v)
                    && fields.matches(v)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Keys of all objects of a type (optionally in one namespace).
    pub fn keys_of(&self, res: &ResourceKey, ns: Option<&str>) -> Vec<ObjKey> {
        self.objects
            .keys()
            .filter(|k| k.res == *res && ns.is_none_or(|n| n == k.ns))
            .cloned()
            .collect()
    }

    /// Stores `obj` under a fresh resourceVersion and tells watchers.
    pub(crate) fn commit_put(&mut self, key: ObjKey, mut obj: Value) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        if let Some(uid) = crate::util::meta_str(&obj, "uid") {
            self.uids.insert(uid.to_string(), key.clone());
        }
        let old = self.objects.insert(key.clone(), obj.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.push_event(key, kind, old.map(Arc::new), Arc::new(obj.clone()));
        obj
    }

    /// Removes an object, tells watchers (the DELETED object carries a new resourceVersion,
    /// as with the real server) and queues its dependents for garbage collection.
    pub(crate) fn commit_remove(&mut self, key: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let uid = crate::util::meta_str(&obj, "uid").unwrap_or("").to_string();
        self.uids.remove(&uid);
        let owners = crate::util::owner_refs(&obj)
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        let crd = (key.res == crate::resources::crd_key()).then(|| obj.clone());
        self.gc_queue.push_back(Removed {
            key: key.clone(),
            uid,
            owners,
            crd,
        });
        self.push_event(key.clone(), EventType::Deleted, None, Arc::new(obj.clone()));
        Some(obj)
    }

    fn push_event(
        &mut self,
        key: ObjKey,
        kind: EventType,
        old: Option<Arc<Value>>,
        obj: Arc<Value>,
    ) {
        let ev = Arc::new(Event {
            rv: self.rv,
            key,
            kind,
            old,
            obj,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        self.watchers.retain(|w| {
            let Some(msg) = w.filter.translate(&ev) else { return true };
            match w.tx.try_send(msg) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(watch = w.id, resource = %w.filter.res.plural, "watcher fell too far behind; closing it with 410");
                    w.overflow.store(true, Ordering::SeqCst);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Registers a watcher atomically with the events it must replay, so none are missed.
    pub fn register_watch(
        &mut self,
        filter: WatchFilter,
        start: WatchStart,
    ) -> Result<WatchRegistration, ApiError> {
        let initial = match start {
            WatchStart::CurrentState => self
                .objects
                .iter()
                .filter(|(k, v)| filter.matches(k, v))
                .map(|(_, v)| WatchMsg::Event(EventType::Added, Arc::new(v.clone())))
                .collect(),
            WatchStart::After(rv) => {
                if rv < self.compacted {
                    return Err(ApiError::expired(rv, self.compacted + 1));
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .filter_map(|e| filter.translate(e))
                    .collect()
            }
        };
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let overflow = Arc::new(AtomicBool::new(false));
        let id = self.next_watch_id;
        self.next_watch_id += 1;
        self.watchers.push(WatcherSlot {
            id,
            filter,
            tx,
            overflow: overflow.clone(),
        });
        Ok(WatchRegistration {
            id,
            rx,
            initial,
            overflow,
            rv: self.rv,
        })
    }

    /// Queues a BOOKMARK in the watcher's stream; ordered after every event already sent.
    pub fn request_bookmark(&mut self, id: u64) {
        let rv = self.rv;
        if let Some(w) = self.watchers.iter().find(|w| w.id == id) {
            if w.tx.try_send(WatchMsg::Bookmark(rv)).is_err() {
                // A full buffer is handled on the next event; a bookmark is never urgent.
            }
        }
    }

    pub fn unregister_watch(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    /// Ends every watch stream (clients see the connection close and re-watch).
    pub fn close_watches(&mut self) {
        self.watchers.clear();
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// Drops all watch history, like an etcd compaction: watching from any older
    /// resourceVersion then gets 410 Expired.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Puts a saved object back without events (loading a state file).
    pub(crate) fn restore_object(&mut self, key: ObjKey, obj: Value) {
        if let Some(uid) = crate::util::meta_str(&obj, "uid") {
            self.uids.insert(uid.to_string(), key.clone());
        }
        self.objects.insert(key, obj);
    }

    /// Continues numbering after a loaded state; older resourceVersions are expired.
    pub(crate) fn restore_rv(&mut self, rv: u64) {
        self.rv = self.rv.max(rv);
        self.compacted = self.rv;
    }

    pub(crate) fn has_uid(&self, uid: &str) -> bool {
        self.uids.contains_key(uid)
    }
}
