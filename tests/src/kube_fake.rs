//! A stand-in for the Kubernetes API server (none can be installed here), speaking the
//! list/watch protocol kube-runtime's watcher uses: lists with a `resourceVersion`,
//! watches from one (chunked JSON lines of ADDED / MODIFIED / DELETED), field
//! selectors on `spec.nodeName`, and `410 Gone` for a watch from a version it has
//! forgotten — which forces the watcher to relist. Tests change objects in-process
//! (`put`, `delete`) and can expire every open watch (`expire_watches`). Clients can
//! write too, as the EC2 mirror does: GET of one object, POST (409 AlreadyExists),
//! PUT (409 Conflict on a stale resourceVersion), PATCH (server-side apply, taken as
//! create-or-replace) and DELETE, for Leases and the mirror's kinds as for the rest.
//!
//! Plain HTTP/1.1 on one port, a thread per connection, every response `Connection:
//! close`. It listens inside a network namespace (the daemon's), since loopback is per
//! namespace.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// A change, as watches replay it.
#[derive(Clone)]
struct Change {
    rv: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// plural -> namespace/name -> object (with its resourceVersion).
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Change>,
    /// Watches from before this version get 410 Gone.
    oldest: u64,
    /// Bumped by `expire_watches`: open watches end with 410.
    epoch: u64,
}

pub struct FakeApi {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
    }
}

/// The resources served, and their list kinds.
const RESOURCES: [(&str, &str); 6] = [
    ("pods", "PodList"),
    ("securitygrouppolicies", "SecurityGroupPolicyList"),
    ("serviceaccounts", "ServiceAccountList"),
    ("leases", "LeaseList"),
    ("mirroredsecuritygroups", "MirroredSecurityGroupList"),
    ("mirroredprefixlists", "MirroredPrefixListList"),
];

/// What a request path names: a resource, and one object of it.
struct Target {
    plural: String,
    namespace: String,
    name: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let p = path.split('?').next()?;
    let segs: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let i = segs
        .iter()
        .position(|s| RESOURCES.iter().any(|(r, _)| r == s))?;
    let namespace = segs
        .iter()
        .position(|s| *s == "namespaces")
        .filter(|j| *j < i)
        .and_then(|j| segs.get(j + 1))
        .map_or(String::new(), |s| s.to_string());
    Some(Target {
        plural: segs[i].to_string(),
        namespace,
        name: segs.get(i + 1).map(|s| s.to_string()),
    })
}

fn query(path: &str, key: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3D", "=").replace("%2F", "/"))
    })
}

/// Whether `obj` passes a `spec.nodeName=X` field selector.
fn selected(obj: &Value, fields: &Option<String>) -> bool {
    match fields
        .as_deref()
        .and_then(|f| f.strip_prefix("spec.nodeName="))
    {
        Some(node) => obj["spec"]["nodeName"] == node,
        None => true,
    }
}

fn list_kind(plural: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|(r, _)| *r == plural)
        .map_or("List", |(_, k)| k)
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl FakeApi {
    /// Starts listening on 127.0.0.1 (a free port) inside network namespace `ns`.
    pub fn start(ns: &str) -> Result<FakeApi> {
        let listener = crate::sim::in_netns(ns, || TcpListener::bind("127.0.0.1:0"))??;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !sp.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (st, sp) = (st.clone(), sp.clone());
                        std::thread::spawn(move || {
                            let _ = serve(c, &st, &sp);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(FakeApi { port, state, stop })
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://127.0.0.1:{}'}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
                self.port
            ),
        )
        .context("writing the kubeconfig")
    }

    /// Creates or replaces an object (`plural`: pods, securitygrouppolicies,
    /// serviceaccounts), as `kubectl apply` would.
    pub fn put(&self, plural: &str, obj: Value) {
        store(&self.state, plural, obj);
    }

    /// The objects of `plural` now, by namespace/name.
    pub fn objects(&self, plural: &str) -> BTreeMap<String, Value> {
        let s = self.state.0.lock().unwrap();
        s.objects.get(plural).cloned().unwrap_or_default()
    }

    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        remove(&self.state, plural, &format!("{namespace}/{name}"));
    }

    /// Forgets the change history and ends every open watch with 410 Gone: each
    /// watcher must relist (and learns of deletions only from what the list lacks).
    pub fn expire_watches(&self) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().unwrap();
        s.oldest = s.rv + 1;
        s.log.clear();
        s.epoch += 1;
        cv.notify_all();
    }

    /// Deletes an object without telling the watches (as if the event were lost in a
    /// compaction): only a relist shows it gone.
    pub fn delete_silently(&self, plural: &str, namespace: &str, name: &str) {
        let (m, _) = &*self.state;
        let mut s = m.lock().unwrap();
        if let Some(o) = s.objects.get_mut(plural) {
            o.remove(&format!("{namespace}/{name}"));
        }
        s.rv += 1;
    }
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// Creates or replaces an object; the object as stored (its resourceVersion set).
fn store(state: &Shared, plural: &str, mut obj: Value) -> Value {
    let (m, cv) = &**state;
    let mut s = m.lock().unwrap();
    s.rv += 1;
    let rv = s.rv;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let k = key(&obj);
    let existed = s
        .objects
        .entry(plural.to_string())
        .or_default()
        .insert(k, obj.clone())
        .is_some();
    s.log.push(Change {
        rv,
        plural: plural.into(),
        kind: if existed { "MODIFIED" } else { "ADDED" },
        object: obj.clone(),
    });
    cv.notify_all();
    obj
}

/// Deletes an object (`key`: namespace/name); the object as it was.
fn remove(state: &Shared, plural: &str, key: &str) -> Option<Value> {
    let (m, cv) = &**state;
    let mut s = m.lock().unwrap();
    let mut obj = s.objects.get_mut(plural).and_then(|o| o.remove(key))?;
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let rv = s.rv;
    s.log.push(Change {
        rv,
        plural: plural.into(),
        kind: "DELETED",
        object: obj.clone(),
    });
    cv.notify_all();
    Some(obj)
}

fn respond(w: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        w,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","status":"Failure","code":code,"reason":reason,"message":message})
}

/// A write, or a read of one object.
fn write_or_get(
    w: &mut TcpStream,
    state: &Shared,
    method: &str,
    t: &Target,
    body: &[u8],
) -> Result<()> {
    let name = t.name.clone().unwrap_or_default();
    let mut obj: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if obj.is_object() {
        if !t.namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(t.namespace);
        }
        if !name.is_empty() {
            obj["metadata"]["name"] = json!(name);
        }
    }
    let k = if obj.is_object() {
        key(&obj)
    } else {
        format!("{}/{name}", t.namespace)
    };
    let current = state
        .0
        .lock()
        .unwrap()
        .objects
        .get(&t.plural)
        .and_then(|o| o.get(&k).cloned());
    let (code, reply) = match (method, current) {
        ("GET", Some(o)) => (200, o),
        ("GET" | "PUT" | "DELETE", None) => {
            (404, status(404, "NotFound", &format!("{k} not found")))
        }
        ("POST", Some(_)) => (
            409,
            status(409, "AlreadyExists", &format!("{k} already exists")),
        ),
        ("POST", None) => (201, store(state, &t.plural, obj)),
        ("PUT", Some(o)) => {
            let asked = &obj["metadata"]["resourceVersion"];
            if !asked.is_null() && *asked != o["metadata"]["resourceVersion"] {
                (409, status(409, "Conflict", "the object has been modified"))
            } else {
                (200, store(state, &t.plural, obj))
            }
        }
        ("PATCH", _) => (200, store(state, &t.plural, obj)),
        ("DELETE", Some(_)) => (200, remove(state, &t.plural, &k).unwrap_or_default()),
        _ => (405, status(405, "MethodNotAllowed", method)),
    };
    respond(w, code, &reply)?;
    Ok(())
}

/// One request: a list, a watch, or (`write_or_get`) the rest.
fn serve(c: TcpStream, state: &Shared, stop: &AtomicBool) -> Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("GET").to_string();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((_, v)) = h
            .split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(&mut r, &mut body)?;
    let mut w = c;
    let target = target(&path);
    if let Some(t) = target
        .as_ref()
        .filter(|t| method != "GET" || t.name.is_some())
    {
        return write_or_get(&mut w, state, &method, t, &body);
    }
    let Some(plural) = target.map(|t| t.plural) else {
        let body = json!({"kind":"Status","apiVersion":"v1","status":"Failure","code":404,"reason":"NotFound","message":"not served"}).to_string();
        write!(
            w,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    };
    let fields = query(&path, "fieldSelector");
    if query(&path, "watch").as_deref() != Some("true") {
        let (m, _) = &**state;
        let s = m.lock().unwrap();
        let items: Vec<&Value> = s
            .objects
            .get(&plural)
            .map(|o| o.values().filter(|v| selected(v, &fields)).collect())
            .unwrap_or_default();
        let body = json!({
            "kind": list_kind(&plural),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items,
        })
        .to_string();
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    // A watch: replay what came after `resourceVersion`, then follow.
    let from: u64 = query(&path, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit = query(&path, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64)
        .min(290);
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = |w: &mut TcpStream, v: &Value| -> std::io::Result<()> {
        let line = format!("{v}\n");
        write!(w, "{:x}\r\n{line}\r\n", line.len())?;
        w.flush()
    };
    let end = Instant::now() + Duration::from_secs(limit);
    let (m, cv) = &**state;
    let mut s = m.lock().unwrap();
    let epoch = s.epoch;
    let mut seen = from;
    loop {
        if s.epoch != epoch || from + 1 < s.oldest {
            let gone = json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","reason":"Expired","code":410}});
            drop(s);
            chunk(&mut w, &gone)?;
            break;
        }
        let pending: Vec<Change> = s
            .log
            .iter()
            .filter(|c| c.rv > seen && c.plural == plural)
            .cloned()
            .collect();
        if let Some(last) = s.log.last() {
            seen = seen.max(last.rv);
        }
        drop(s);
        for c in pending {
            if selected(&c.object, &fields) {
                chunk(&mut w, &json!({"type": c.kind, "object": c.object}))?;
            }
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > end {
            break;
        }
        s = m.lock().unwrap();
        s = cv.wait_timeout(s, Duration::from_millis(200)).unwrap().0;
    }
    write!(w, "0\r\n\r\n")?;
    Ok(())
}
