//! A safe, small pickle decoder (protocols 2–5, the opcodes checkpoints use).
//!
//! Nothing is executed. A `GLOBAL`/`STACK_GLOBAL` becomes
//! [`Value::Global`] — only names on the caller's allow-list are accepted,
//! any other is an [`Error::Pickle`] naming it — and `REDUCE`, `NEWOBJ` and
//! `BUILD` become inert [`Value::Object`] nodes (callable, arguments, state)
//! that the caller interprets. Why not `serde-pickle`: it resolves only a
//! fixed set of builtins and turns every other global into an error or
//! `None`, which loses exactly what a checkpoint's `.metadata` is made of
//! (which class each object is).
//!
//! Containers live in an arena while decoding, so a list or dict that is
//! memoized before it is filled (the usual `EMPTY_LIST MEMOIZE … APPENDS`)
//! is the same object wherever the memo refers to it.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` (or a protocol-2 `str` from Python 2, or a `bytearray`).
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A `set` or `frozenset`.
    Set(Vec<Value>),
    /// A reference to `module.name` (not resolved, not executed).
    Global {
        /// Module.
        module: String,
        /// Name.
        name: String,
    },
    /// `callable(*args)` from `REDUCE`/`NEWOBJ`, with the `BUILD` state.
    Object {
        /// What was called (usually a [`Value::Global`]).
        callable: Box<Value>,
        /// The arguments (a tuple).
        args: Box<Value>,
        /// The state `BUILD` set, if any.
        state: Option<Box<Value>>,
    },
    /// A persistent id (`BINPERSID`), e.g. a tensor's storage reference.
    PersistentId(Box<Value>),
}

impl Value {
    /// `Some("module.name")` for a global, or for an object made by
    /// calling one.
    pub fn class_name(&self) -> Option<String> {
        match self {
            Value::Global { module, name } => Some(format!("{module}.{name}")),
            Value::Object { callable, .. } => callable.class_name(),
            _ => None,
        }
    }

    /// The value for `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// At most 80 characters of the value's `Debug` form, for messages:
    /// formatting stops there, however large the value is.
    pub fn brief(&self) -> String {
        use std::fmt::Write;
        struct Capped(String);
        impl Write for Capped {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for c in s.chars() {
                    if self.0.len() >= 80 {
                        return Err(std::fmt::Error);
                    }
                    self.0.push(c);
                }
                Ok(())
            }
        }
        let mut w = Capped(String::new());
        if write!(w, "{self:?}").is_err() {
            w.0.push('…');
        }
        w.0
    }

    /// The items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
}

/// The expanded size of an arena node's tree.
#[derive(Debug, Clone, Copy)]
struct Measured {
    nodes: u64,
    bytes: u64,
    height: usize,
}

#[derive(Debug, Clone, Copy)]
enum Measure {
    Unvisited,
    Visiting,
    Done(Measured),
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Object {
        callable: usize,
        args: usize,
        state: Option<usize>,
    },
    PersistentId(usize),
}

/// Largest nesting materialized (real checkpoints nest a handful deep).
const MAX_DEPTH: usize = 200;

/// How many times larger than its input a pickle may become once every
/// shared (memoized) reference is expanded into its own copy, in nodes and
/// in string bytes. A real `.metadata` expands less than twice (a few
/// `torch.Size` objects are shared); a hostile one that nests references to
/// references grows exponentially and is refused before it is expanded.
const MAX_EXPANSION: u64 = 16;

/// Nodes and bytes any pickle may expand to, however small its input.
const MIN_BUDGET: u64 = 1 << 20;

/// Decodes one pickle from `data`, accepting only the globals `allowed`
/// (as `"module.name"`).
///
/// Shared references (the memo) are resolved inside an arena; before the
/// tree is built, its expanded size is measured once per arena node and
/// checked against a budget of [`MAX_EXPANSION`] times the input (nodes
/// and string bytes, at least [`MIN_BUDGET`]), so decoding takes time and
/// memory linear in the input whatever it is.
///
/// # Errors
/// [`Error::Pickle`] with the offset: truncated input (the detail starts
/// with `truncated`), an unknown opcode, a global not on the list, a
/// malformed stack, a container that contains itself, nesting deeper than
/// 200, or a tree over the budget.
///
/// ```text
/// // pickle.dumps({"a": [1, 2]}, protocol=2)
/// decode(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02es.", &[])
///     == Ok(Value::Dict([("a", List([Int(1), Int(2)]))]))
/// // A global that is not allowed is an error, never code:
/// decode(b"\x80\x02cos\nsystem\n.", &[]).is_err()
/// ```
/// (both checked in this module's tests)
pub fn decode(data: &[u8], allowed: &[&str]) -> Result<Value> {
    Decoder {
        data,
        pos: 0,
        op_at: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        allowed,
    }
    .run()
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    arena: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
    allowed: &'a [&'a str],
}

impl Decoder<'_> {
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::Pickle {
            offset: self.op_at as u64,
            detail: detail.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: the opcode at byte {} needs {n} more byte(s)",
                self.op_at
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        let mut v = 0u64;
        for (i, x) in b.iter().enumerate() {
            v |= (*x as u64) << (8 * i);
        }
        Ok(v)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| self.err("truncated: missing newline"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, n: Node) {
        self.arena.push(n);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> Result<usize> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("stack underflow (at a mark)"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no mark"))?;
        if m > self.stack.len() {
            return Err(self.err("mark above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn top(&self) -> Result<usize> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("empty stack"))
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        let full = format!("{module}.{name}");
        if !self.allowed.iter().any(|a| *a == full) {
            return Err(self.err(format!(
                "global {full} is not allowed (nothing is executed)"
            )));
        }
        self.push(Node::Leaf(Value::Global { module, name }));
        Ok(())
    }

    fn str_of(&self, idx: usize) -> Result<String> {
        match &self.arena[idx] {
            Node::Leaf(Value::Str(s)) => Ok(s.clone()),
            _ => Err(self.err("STACK_GLOBAL needs two strings")),
        }
    }

    fn append(&mut self, list: usize, items: Vec<usize>) -> Result<()> {
        match &mut self.arena[list] {
            Node::List(v) | Node::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND to something that is not a list")),
        }
    }

    fn set_items(&mut self, dict: usize, kv: Vec<usize>) -> Result<()> {
        if !kv.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let pairs: Vec<(usize, usize)> = kv.chunks(2).map(|c| (c[0], c[1])).collect();
        match &mut self.arena[dict] {
            Node::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM on something that is not a dict")),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(self.err(format!("unsupported protocol {p}")));
                    }
                }
                0x95 => {
                    self.uint(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    self.check_budget(v)?;
                    return self.materialize(v, 0);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::Leaf(Value::None)),
                0x88 => self.push(Node::Leaf(Value::Bool(true))),
                0x89 => self.push(Node::Leaf(Value::Bool(false))),
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Node::Leaf(Value::Int(v)));
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Node::Leaf(Value::Int(v)));
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Node::Leaf(Value::Int(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    } as usize;
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        return Err(
                            self.err(format!("integer of {n} bytes does not fit in 64 bits"))
                        );
                    }
                    let mut v: i64 = 0;
                    for (i, x) in b.iter().enumerate() {
                        v |= (*x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend
                    }
                    self.push(Node::Leaf(Value::Int(v)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Node::Leaf(Value::Float(f64::from_be_bytes(a))));
                }
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.uint(1)?,
                        b'X' => self.uint(4)?,
                        _ => self.uint(8)?,
                    } as usize;
                    let b = self.take(n)?.to_vec();
                    let s = String::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))?;
                    self.push(Node::Leaf(Value::Str(s)));
                }
                b'C' | b'B' | 0x8e | b'U' | b'T' | 0x96 => {
                    let n = match op {
                        b'C' | b'U' => self.uint(1)?,
                        b'B' | b'T' => self.uint(4)?,
                        _ => self.uint(8)?,
                    } as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Leaf(Value::Bytes(b)));
                }
                b')' => self.push(Node::Tuple(vec![])),
                b']' => self.push(Node::List(vec![])),
                b'}' => self.push(Node::Dict(vec![])),
                0x8f => self.push(Node::Set(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'd' => {
                    let kv = self.pop_mark()?;
                    self.push(Node::Dict(vec![]));
                    let d = self.top()?;
                    self.set_items(d, kv)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let kv = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, kv)?;
                }
                0x94 => {
                    let t = self.top()?;
                    let id = self.memo.len() as u64;
                    self.memo.insert(id, t);
                }
                b'q' | b'r' => {
                    let id = if op == b'q' {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    };
                    let t = self.top()?;
                    self.memo.insert(id, t);
                }
                b'h' | b'j' => {
                    let id = if op == b'h' {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    };
                    let v = *self
                        .memo
                        .get(&id)
                        .ok_or_else(|| self.err(format!("memo {id} not set")))?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.str_of(module)?, self.str_of(name)?);
                    self.global(module, name)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(Node::Object {
                        callable,
                        args,
                        state: None,
                    });
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    match &mut self.arena[obj] {
                        Node::Object { state: s, .. } => *s = Some(state),
                        _ => return Err(self.err("BUILD on something that is not an object")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Node::PersistentId(pid));
                }
                other => {
                    return Err(self.err(format!("unsupported opcode 0x{other:02x}")));
                }
            }
        }
    }

    /// The arena nodes `idx` refers to.
    fn children(&self, idx: usize) -> Vec<usize> {
        match &self.arena[idx] {
            Node::Leaf(_) => Vec::new(),
            Node::List(v) | Node::Tuple(v) | Node::Set(v) => v.clone(),
            Node::Dict(v) => v.iter().flat_map(|(k, x)| [*k, *x]).collect(),
            Node::Object {
                callable,
                args,
                state,
            } => [Some(*callable), Some(*args), *state]
                .into_iter()
                .flatten()
                .collect(),
            Node::PersistentId(p) => vec![*p],
        }
    }

    /// Checks that the tree under `root`, every shared reference expanded,
    /// stays within the budget, nests at most [`MAX_DEPTH`] deep and has no
    /// cycle — measuring each arena node once.
    fn check_budget(&self, root: usize) -> Result<()> {
        let len = self.data.len() as u64;
        let budget = len.saturating_mul(MAX_EXPANSION).max(MIN_BUDGET);
        let mut sizes = vec![Measure::Unvisited; self.arena.len()];
        let m = self.measure(root, 0, budget, &mut sizes)?;
        if m.nodes > budget || m.bytes > budget {
            return Err(self.over_budget(budget));
        }
        Ok(())
    }

    fn over_budget(&self, budget: u64) -> Error {
        self.err(format!(
            "expands beyond the decoding budget (more than {budget} nodes or string bytes once shared references are expanded, from {} input bytes)",
            self.data.len()
        ))
    }

    fn measure(
        &self,
        idx: usize,
        depth: usize,
        budget: u64,
        sizes: &mut [Measure],
    ) -> Result<Measured> {
        let deep = || self.err("nested too deeply");
        match sizes[idx] {
            Measure::Done(m) if depth + m.height > MAX_DEPTH => return Err(deep()),
            Measure::Done(m) => return Ok(m),
            Measure::Visiting => {
                return Err(self.err("recursive: a container contains itself"));
            }
            Measure::Unvisited if depth > MAX_DEPTH => return Err(deep()),
            Measure::Unvisited => {}
        }
        sizes[idx] = Measure::Visiting;
        let bytes = match &self.arena[idx] {
            Node::Leaf(Value::Str(s)) => s.len(),
            Node::Leaf(Value::Bytes(b)) => b.len(),
            Node::Leaf(Value::Global { module, name }) => module.len() + name.len(),
            _ => 0,
        };
        let mut m = Measured {
            nodes: 1,
            bytes: bytes as u64,
            height: 0,
        };
        for c in self.children(idx) {
            let cm = self.measure(c, depth + 1, budget, sizes)?;
            m.nodes = m.nodes.saturating_add(cm.nodes);
            m.bytes = m.bytes.saturating_add(cm.bytes);
            m.height = m.height.max(cm.height + 1);
            if m.nodes > budget || m.bytes > budget {
                return Err(self.over_budget(budget));
            }
        }
        sizes[idx] = Measure::Done(m);
        Ok(m)
    }

    fn materialize(&self, idx: usize, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply (or recursive)"));
        }
        let m = |i: &usize| self.materialize(*i, depth + 1);
        Ok(match &self.arena[idx] {
            Node::Leaf(v) => v.clone(),
            Node::List(v) => Value::List(v.iter().map(m).collect::<Result<_>>()?),
            Node::Tuple(v) => Value::Tuple(v.iter().map(m).collect::<Result<_>>()?),
            Node::Set(v) => Value::Set(v.iter().map(m).collect::<Result<_>>()?),
            Node::Dict(v) => Value::Dict(
                v.iter()
                    .map(|(k, x)| Ok((m(k)?, m(x)?)))
                    .collect::<Result<_>>()?,
            ),
            Node::Object {
                callable,
                args,
                state,
            } => Value::Object {
                callable: Box::new(m(callable)?),
                args: Box::new(m(args)?),
                state: match state {
                    Some(s) => Some(Box::new(m(s)?)),
                    None => None,
                },
            },
            Node::PersistentId(p) => Value::PersistentId(Box::new(m(p)?)),
        })
    }
}

#[cfg(test)]
#[path = "pickle_fixture_tests.rs"]
mod fixture_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_dict_decodes_and_a_foreign_global_is_refused() {
        // pickle.dumps({"a": [1, 2]}, protocol=2)
        let data = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02es.";
        let v = decode(data, &[]).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert!(decode(b"\x80\x02cos\nsystem\n.", &[]).is_err());
    }

    #[test]
    fn memoized_list_filled_later_is_shared() {
        // l = []; pickle.dumps([l, l]) after l.append(1) — protocol 4 style.
        // ] MEMOIZE ( ] MEMOIZE K1 a h1 ...: build by hand:
        let data = [
            0x80, 4, b']', 0x94, b'(', b']', 0x94, b'K', 1, b'a', b'h', 1, b'e', b'.',
        ];
        let v = decode(&data, &[]).unwrap();
        let inner = Value::List(vec![Value::Int(1)]);
        assert_eq!(v, Value::List(vec![inner.clone(), inner]));
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        let good = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02es.";
        for n in 0..good.len() {
            assert!(decode(&good[..n], &[]).is_err(), "prefix of {n} bytes");
        }
        for bad in [
            &b"\xff"[..],
            b"\x80\x09.",
            b"a.",
            b"h\x05.",
            b"(t(.",
            b"K\x01K\x02s.",
        ] {
            assert!(decode(bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globals_are_names_on_an_allow_list() {
        let data = b"\x80\x02ctorch\nSize\n](K\x02K\x03e\x85R.";
        let e = decode(data, &[]).unwrap_err().to_string();
        assert!(e.contains("torch.Size") && e.contains("not allowed"), "{e}");
        let v = decode(data, &["torch.Size"]).unwrap();
        assert_eq!(v.class_name().as_deref(), Some("torch.Size"));
    }

    /// `[]` memoized, then `depth` lists each holding the previous one
    /// twice (by memo reference): a few bytes per level, 2^depth leaves
    /// once every reference is expanded.
    fn nested_memo_references(depth: u8) -> Vec<u8> {
        let mut d = vec![0x80, 2, b']', b'q', 0];
        for i in 1..=depth {
            d.extend_from_slice(&[b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
        }
        d.push(b'.');
        d
    }

    /// Runs `f` on a thread and waits at most 20 s for it (a hang guard,
    /// not a speed assertion: the hostile input below took hours before).
    fn within_hang_guard<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("decoding hung (exponential expansion of shared memo nodes?)")
    }

    #[test]
    fn pickle_nested_memo_references_decode_in_milliseconds() {
        // 198 bytes at depth 24 took 6-12 s before, x4 per two more levels;
        // 32 levels would take hours.
        assert_eq!(nested_memo_references(24).len(), 198);
        let data = nested_memo_references(32);
        let e = within_hang_guard(move || decode(&data, &[])).unwrap_err();
        assert!(matches!(e, Error::Pickle { .. }), "{e:?}");
        assert!(e.to_string().contains("budget"), "{e}");
        // A few levels of sharing is fine, and comes out whole.
        let v = decode(&nested_memo_references(3), &[]).unwrap();
        let l0 = Value::List(vec![]);
        let l1 = Value::List(vec![l0.clone(), l0]);
        let l2 = Value::List(vec![l1.clone(), l1]);
        assert_eq!(v, Value::List(vec![l2.clone(), l2]));
    }

    #[test]
    fn pickle_list_that_contains_itself_is_an_error() {
        // l = []; l.append(l)
        let e = decode(&[0x80, 2, b']', b'q', 0, b'h', 0, b'a', b'.'], &[]).unwrap_err();
        assert!(e.to_string().contains("recursive"), "{e}");
    }

    #[test]
    fn pickle_nested_100000_deep_is_an_error_not_a_stack_overflow() {
        // 100 000 empty lists, each appended into the one below it.
        let n = 100_000;
        let mut d = vec![0x80, 2];
        d.extend(std::iter::repeat_n(b']', n));
        d.extend(std::iter::repeat_n(b'a', n - 1));
        d.push(b'.');
        let e = decode(&d, &[]).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
    }

    #[test]
    fn pickle_one_long_string_referenced_many_times_is_over_the_byte_budget() {
        // A 64 KiB string memoized, then 10 000 references to it in a list:
        // 640 MiB once expanded.
        let mut d = vec![0x80, 2, b'X'];
        d.extend_from_slice(&(65536u32).to_le_bytes());
        d.extend(std::iter::repeat_n(b'x', 65536));
        d.extend_from_slice(&[b'q', 0, b'(']);
        for _ in 0..10_000 {
            d.extend_from_slice(&[b'h', 0]);
        }
        d.extend_from_slice(b"l.");
        let e = within_hang_guard(move || decode(&d, &[])).unwrap_err();
        assert!(e.to_string().contains("budget"), "{e}");
    }

    #[test]
    fn negative_and_long_ints() {
        // J -2, LONG1 of 2**40, LONG1 of -1
        let data = [
            0x80, 2, b'J', 0xfe, 0xff, 0xff, 0xff, 0x8a, 6, 0, 0, 0, 0, 0, 1, 0x8a, 1, 0xff, 0x87,
            b'.',
        ];
        let v = decode(&data, &[]).unwrap();
        assert_eq!(
            v,
            Value::Tuple(vec![Value::Int(-2), Value::Int(1 << 40), Value::Int(-1)])
        );
    }
}
