//! A small, safe unpickler for what `torch.save` writes (`data.pkl` of a legacy
//! `model_weights.ckpt`): protocol 2-5 opcodes, storages as persistent ids, and only an
//! allow-list of globals (anything else is an error naming the class). Hostile input is an
//! error, never a panic: every length and memo index is checked, the stack, the memo, the
//! nesting depth and the values copied out of the memo are bounded by the input's length.

use anyhow::{Result, bail};
use std::collections::HashMap;

/// A storage named by a persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// The zip entry `data/<key>` holding its bytes.
    pub key: String,
    /// torch's dtype name (`bfloat16`, `float32`, `float16`, ...).
    pub dtype: String,
    pub numel: u64,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// In insertion order (an `OrderedDict` or a `dict`).
    Dict(Vec<(Value, Value)>),
    /// An allowed global, as a value (a callable or class, or a dtype such as `torch.bfloat16`).
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An object steerlm has no use for (`io.BytesIO`, ...), by its class.
    Opaque(String),
    /// A plain data object of an allowed class (`torch.distributed.checkpoint`'s
    /// metadata): made by `NEWOBJ` with no arguments, then given its state (a dict of
    /// fields, or a tuple for some classes) by `BUILD`.
    Object {
        class: String,
        state: Box<Value>,
    },
}

impl Value {
    /// Field `name` of an [`Value::Object`] whose state is a dict, or of a dict.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let fields = match self {
            Value::Object { state, .. } => match state.as_ref() {
                Value::Dict(fields) => fields,
                _ => return None,
            },
            Value::Dict(fields) => fields,
            _ => return None,
        };
        fields.iter().find(|(k, _)| matches!(k, Value::Str(k) if k == name)).map(|(_, v)| v)
    }

    /// The class of an [`Value::Object`].
    pub fn class(&self) -> Option<&str> {
        match self {
            Value::Object { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// Globals `load` accepts; the storage classes name their dtype.
const STORAGES: &[(&str, &str)] = &[
    ("torch.FloatStorage", "float32"),
    ("torch.BFloat16Storage", "bfloat16"),
    ("torch.HalfStorage", "float16"),
    ("torch.DoubleStorage", "float64"),
    ("torch.LongStorage", "int64"),
    ("torch.IntStorage", "int32"),
    ("torch.ShortStorage", "int16"),
    ("torch.CharStorage", "int8"),
    ("torch.ByteStorage", "uint8"),
    ("torch.BoolStorage", "bool"),
    ("torch.UntypedStorage", "uint8"),
];
const GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "_io.BytesIO",
    "_codecs.encode",
    "builtins.set",
    "builtins.frozenset",
    "torch.bfloat16",
    "torch.float32",
    "torch.float16",
    "torch.Size",
];

/// Data classes built as [`Value::Object`]s: `torch.distributed.checkpoint`'s `.metadata`
/// (FORMAT.md section 5).
const OBJECTS: &[&str] = &[
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
];

/// Callables whose result steerlm never looks at (an enum member, a layout, a path in
/// `StorageMeta`): called, they give an [`Value::Opaque`].
const OPAQUE_CALLS: &[&str] = &[
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.serialization._get_layout",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "_io.BytesIO",
];

/// Deepest nesting of containers accepted (torch state dicts need about 4).
const MAX_DEPTH: usize = 128;

/// One stack entry: the value, its nesting depth and its size in nodes (so neither
/// needs a recursive walk).
#[derive(Clone)]
struct Item {
    value: Value,
    depth: usize,
    nodes: usize,
}

impl Item {
    fn leaf(value: Value) -> Self {
        Item { value, depth: 0, nodes: 1 }
    }
}

enum Entry {
    Mark,
    Item(Item),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Entry>,
    memo: HashMap<u32, Item>,
    /// Nodes that memo gets may still copy.
    budget: usize,
}

fn container(value: Value, children: &[Item]) -> Result<Item> {
    let depth = 1 + children.iter().map(|c| c.depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("containers nested deeper than {MAX_DEPTH}");
    }
    Ok(Item { value, depth, nodes: 1 + children.iter().map(|c| c.nodes).sum::<usize>() })
}

fn as_int(value: &Value, what: &str) -> Result<i64> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => bail!("{what}: expected an integer, found {}", kind(other)),
    }
}

fn as_u64(value: &Value, what: &str) -> Result<u64> {
    u64::try_from(as_int(value, what)?).map_err(|_| anyhow::anyhow!("{what}: a negative value"))
}

fn int_list(value: &Value, what: &str) -> Result<Vec<u64>> {
    match value {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|v| as_u64(v, what)).collect(),
        other => bail!("{what}: expected a tuple of integers, found {}", kind(other)),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) => "an int".into(),
        Value::Float(_) => "a float".into(),
        Value::Str(_) => "a str".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::List(_) => "a list".into(),
        Value::Tuple(_) => "a tuple".into(),
        Value::Dict(_) => "a dict".into(),
        Value::Global(name) => format!("`{name}`"),
        Value::Storage(_) => "a storage".into(),
        Value::Tensor(_) => "a tensor".into(),
        Value::Opaque(class) | Value::Object { class, .. } => format!("a `{class}` object"),
    }
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let Some(end) = end else { bail!("truncated pickle: {n} bytes wanted at offset {}", self.pos) };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn sized(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| anyhow::anyhow!("truncated pickle: a {n}-byte value"))?;
        self.take(n)
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { bail!("truncated pickle: an unended line") };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| anyhow::anyhow!("a global's name is not UTF-8"))
    }

    fn push(&mut self, item: Item) -> Result<()> {
        // Every push consumes at least one input byte, except DUP and memo gets: bound
        // the stack by the input's length anyway.
        if self.stack.len() > self.data.len() + 16 {
            bail!("pickle stack overflow");
        }
        self.stack.push(Entry::Item(item));
        Ok(())
    }

    fn pop(&mut self) -> Result<Item> {
        match self.stack.pop() {
            Some(Entry::Item(item)) => Ok(item),
            Some(Entry::Mark) => bail!("pickle: a value expected, a mark found"),
            None => bail!("pickle: stack underflow"),
        }
    }

    fn top(&mut self) -> Result<&mut Item> {
        match self.stack.last_mut() {
            Some(Entry::Item(item)) => Ok(item),
            Some(Entry::Mark) => bail!("pickle: a value expected, a mark found"),
            None => bail!("pickle: stack underflow"),
        }
    }

    /// The items above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let Some(mark) = self.stack.iter().rposition(|e| matches!(e, Entry::Mark)) else {
            bail!("pickle: no mark on the stack")
        };
        let items = self
            .stack
            .drain(mark + 1..)
            .map(|e| match e {
                Entry::Item(item) => item,
                Entry::Mark => unreachable!("the topmost mark is below"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let item = self.top()?.clone();
        if self.memo.len() > self.data.len() {
            bail!("pickle memo overflow");
        }
        self.memo.insert(index, item);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        let Some(item) = self.memo.get(&index) else { bail!("pickle: memo entry {index} was never stored") };
        if item.nodes > self.budget {
            bail!("pickle: memo gets copy more values than the input can hold");
        }
        self.budget -= item.nodes;
        let item = item.clone();
        self.push(item)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Item> {
        let full = format!("{module}.{name}");
        let allowed = [GLOBALS, OBJECTS, OPAQUE_CALLS].iter().any(|list| list.contains(&full.as_str()));
        if allowed || STORAGES.iter().any(|(s, _)| *s == full) {
            return Ok(Item::leaf(Value::Global(full)));
        }
        bail!("the pickle uses `{full}`, which steerlm does not load (only tensors, storages and plain containers)")
    }

    fn persistent(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(fields) = pid else { bail!("persistent id: expected a tuple, found {}", kind(&pid)) };
        let [Value::Str(tag), Value::Global(class), Value::Str(key), _location, numel] = fields.as_slice() else {
            bail!("persistent id: expected ('storage', class, key, location, numel)")
        };
        if tag != "storage" {
            bail!("persistent id: unknown kind `{tag}`");
        }
        let Some((_, dtype)) = STORAGES.iter().find(|(s, _)| s == class) else {
            bail!("persistent id: `{class}` is not a storage class")
        };
        Ok(Value::Storage(StorageRef {
            key: key.clone(),
            dtype: (*dtype).into(),
            numel: as_u64(numel, "storage numel")?,
        }))
    }

    /// `callable(*args)` for the allowed callables.
    fn call(&self, callable: &Value, mut args: Vec<Value>) -> Result<Value> {
        let Value::Global(name) = callable else { bail!("pickle: calls {}, which is not callable", kind(callable)) };
        Ok(match name.as_str() {
            "collections.OrderedDict" => match args.pop() {
                None => Value::Dict(Vec::new()),
                Some(Value::List(pairs)) if args.is_empty() => {
                    let mut dict = Vec::with_capacity(pairs.len());
                    for pair in pairs {
                        match pair {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                let mut kv = kv.into_iter();
                                dict.push((kv.next().unwrap_or(Value::None), kv.next().unwrap_or(Value::None)));
                            }
                            _ => bail!("OrderedDict: expected (key, value) pairs"),
                        }
                    }
                    Value::Dict(dict)
                }
                Some(_) => bail!("OrderedDict: unexpected arguments"),
            },
            "torch._utils._rebuild_tensor_v2" => {
                if args.len() < 4 {
                    bail!("_rebuild_tensor_v2: {} arguments, at least 4 expected", args.len());
                }
                let Value::Storage(storage) = &args[0] else {
                    bail!("_rebuild_tensor_v2: expected a storage, found {}", kind(&args[0]))
                };
                let shape = int_list(&args[2], "tensor shape")?;
                let stride = int_list(&args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    bail!("_rebuild_tensor_v2: shape {shape:?} and stride {stride:?} differ in length");
                }
                Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset: as_u64(&args[1], "storage offset")?,
                    shape,
                    stride,
                })
            }
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(tensor @ Value::Tensor(_)) => tensor,
                _ => bail!("_rebuild_parameter: expected a tensor"),
            },
            "_codecs.encode" => match args.as_slice() {
                [Value::Str(text), Value::Str(encoding)] if encoding == "latin1" || encoding == "latin-1" => {
                    let mut bytes = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        let Ok(b) = u8::try_from(u32::from(c)) else { bail!("_codecs.encode: a non-latin1 character") };
                        bytes.push(b);
                    }
                    Value::Bytes(bytes)
                }
                [Value::Str(text), Value::Str(encoding)] if encoding == "utf-8" || encoding == "utf8" => {
                    Value::Bytes(text.as_bytes().to_vec())
                }
                _ => bail!("_codecs.encode: expected (str, 'latin1')"),
            },
            "builtins.set" | "builtins.frozenset" => match args.pop() {
                None => Value::List(Vec::new()),
                Some(Value::List(items) | Value::Tuple(items)) => Value::List(items),
                Some(_) => bail!("{name}: expected a list"),
            },
            "torch.Size" => match args.pop() {
                Some(Value::Tuple(items)) => Value::Tuple(items),
                _ => bail!("torch.Size: expected a tuple"),
            },
            _ if OBJECTS.contains(&name.as_str()) => {
                if !args.is_empty() {
                    bail!("pickle: `{name}` called with arguments; it is built from its state");
                }
                Value::Object { class: name.clone(), state: Box::new(Value::None) }
            }
            _ if OPAQUE_CALLS.contains(&name.as_str()) => Value::Opaque(name.clone()),
            _ => bail!("pickle: `{name}` cannot be called"),
        })
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("pickle protocol {proto} is not supported");
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: its length is only a hint
                }
                b'.' => {
                    let item = self.pop()?;
                    return Ok(item.value);
                }
                b'(' => {
                    if self.stack.len() > self.data.len() + 16 {
                        bail!("pickle stack overflow");
                    }
                    self.stack.push(Entry::Mark);
                }
                b'0' => {
                    match self.stack.pop() {
                        Some(_) => {}
                        None => bail!("pickle: stack underflow"),
                    };
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let item = self.top()?.clone();
                    if item.nodes > self.budget {
                        bail!("pickle: DUP copies more values than the input can hold");
                    }
                    self.budget -= item.nodes;
                    self.push(item)?;
                }
                b'N' => self.push(Item::leaf(Value::None))?,
                0x88 => self.push(Item::leaf(Value::Bool(true)))?,
                0x89 => self.push(Item::leaf(Value::Bool(false)))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into()?);
                    self.push(Item::leaf(Value::Int(v.into())))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Item::leaf(Value::Int(v.into())))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Item::leaf(Value::Int(v.into())))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { u64::from(self.u8()?) } else { u64::from(self.u32()?) };
                    let bytes = self.sized(n)?;
                    if bytes.len() > 8 {
                        bail!("pickle: an integer of {} bytes is too large", bytes.len());
                    }
                    let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..bytes.len()].copy_from_slice(bytes);
                    self.push(Item::leaf(Value::Int(i64::from_le_bytes(buf))))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into()?);
                    self.push(Item::leaf(Value::Float(v)))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u64::from(self.u32()?),
                        0x8c => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let bytes = self.sized(n)?;
                    let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("pickle: a str is not UTF-8"))?;
                    self.push(Item::leaf(Value::Str(text.to_owned())))?
                }
                b'B' | b'C' | 0x8e | b'T' | b'U' => {
                    let n = match op {
                        b'B' | b'T' => u64::from(self.u32()?),
                        b'C' | b'U' => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let bytes = self.sized(n)?.to_vec();
                    self.push(Item::leaf(Value::Bytes(bytes)))?
                }
                b')' => self.push(Item::leaf(Value::Tuple(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    let value = Value::Tuple(items.iter().map(|i| i.value.clone()).collect());
                    let item = container(value, &items)?;
                    self.push(item)?
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let value = Value::Tuple(items.iter().map(|i| i.value.clone()).collect());
                    let item = container(value, &items)?;
                    self.push(item)?
                }
                b']' => self.push(Item::leaf(Value::List(Vec::new())))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    let value = Value::List(items.iter().map(|i| i.value.clone()).collect());
                    let item = container(value, &items)?;
                    self.push(item)?
                }
                b'a' | b'e' | 0x90 => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    let list = self.top()?;
                    let Value::List(values) = &mut list.value else {
                        bail!("pickle: appends to {}, not a list", kind(&list.value))
                    };
                    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
                    if depth > MAX_DEPTH {
                        bail!("containers nested deeper than {MAX_DEPTH}");
                    }
                    list.depth = list.depth.max(depth);
                    list.nodes += items.iter().map(|i| i.nodes).sum::<usize>();
                    values.extend(items.into_iter().map(|i| i.value));
                }
                0x8f => self.push(Item::leaf(Value::List(Vec::new())))?,
                0x91 => {
                    let items = self.pop_mark()?;
                    let value = Value::List(items.iter().map(|i| i.value.clone()).collect());
                    let item = container(value, &items)?;
                    self.push(item)?
                }
                b'}' => self.push(Item::leaf(Value::Dict(Vec::new())))?,
                b'd' | b's' | b'u' => {
                    let items = match op {
                        b'd' => self.pop_mark()?,
                        b's' => {
                            let value = self.pop()?;
                            let key = self.pop()?;
                            vec![key, value]
                        }
                        _ => self.pop_mark()?,
                    };
                    if items.len() % 2 != 0 {
                        bail!("pickle: an odd number of items for a dict");
                    }
                    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
                    if depth > MAX_DEPTH {
                        bail!("containers nested deeper than {MAX_DEPTH}");
                    }
                    let nodes: usize = items.iter().map(|i| i.nodes).sum();
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k.value, v.value));
                    }
                    if op == b'd' {
                        self.push(Item { value: Value::Dict(pairs), depth, nodes: nodes + 1 })?;
                    } else {
                        let dict = self.top()?;
                        let Value::Dict(existing) = &mut dict.value else {
                            bail!("pickle: sets items of {}, not a dict", kind(&dict.value))
                        };
                        existing.extend(pairs);
                        dict.depth = dict.depth.max(depth);
                        dict.nodes += nodes;
                    }
                }
                b'c' => {
                    let module = self.line()?.to_owned();
                    let name = self.line()?.to_owned();
                    let item = self.global(&module, &name)?;
                    self.push(item)?
                }
                0x93 => {
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        bail!("pickle: STACK_GLOBAL needs two strings")
                    };
                    let item = self.global(&module, &name)?;
                    self.push(item)?
                }
                b'R' | 0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // NEWOBJ_EX's keyword arguments
                    }
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let (depth, nodes) = (args.depth, args.nodes);
                    let Value::Tuple(values) = args.value else { bail!("pickle: call arguments are not a tuple") };
                    let value = self.call(&callable.value, values)?;
                    self.push(Item { value, depth, nodes })?;
                }
                b'b' => {
                    // BUILD: a data object takes its state; for anything else the state is
                    // not needed (OrderedDict's `_metadata`, BytesIO's contents).
                    let state = self.pop()?;
                    let top = self.top()?;
                    if let Value::Object { state: slot, class } = &mut top.value {
                        if **slot != Value::None {
                            bail!("pickle: a `{class}` built twice");
                        }
                        **slot = state.value;
                        top.nodes += state.nodes;
                        top.depth = top.depth.max(state.depth + 1);
                        if top.depth > MAX_DEPTH {
                            bail!("containers nested deeper than {MAX_DEPTH}");
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let value = self.persistent(pid.value)?;
                    self.push(Item::leaf(value))?
                }
                b'q' => {
                    let index = self.u8()?;
                    self.memo_put(index.into())?
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len())?;
                    self.memo_put(index)?
                }
                b'h' => {
                    let index = self.u8()?;
                    self.memo_get(index.into())?
                }
                b'j' => {
                    let index = self.u32()?;
                    self.memo_get(index)?
                }
                other => bail!("pickle opcode 0x{other:02x} at offset {} is not supported", self.pos - 1),
            }
        }
    }
}

/// The value `data` (a pickle) holds.
pub fn load(data: &[u8]) -> Result<Value> {
    let mut machine =
        Machine { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), budget: data.len().saturating_mul(16) + 4096 };
    machine.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What torch.save writes for `{'w': tensor, 'w._extra_state': BytesIO(b'\xff')}`
    /// (protocol 2, as in FORMAT.md section 7).
    fn state_dict() -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01(");
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03ctorch\nBFloat16Storage\nq\x04X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x0ctQK\x00K\x03K\x04\x86K\x04K\x01\x86\x89h\x00)RtR");
        p.extend(b"X\x0e\x00\x00\x00w._extra_state");
        p.extend(
            b"c_io\nBytesIO\n)\x81c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86RK\x00N\x87b",
        );
        p.extend(b"u}X\t\x00\x00\x00_metadatah\x00)Rsb.");
        p
    }

    #[test]
    fn reads_a_torch_state_dict() {
        let Value::Dict(items) = load(&state_dict()).unwrap() else { panic!("a dict") };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0, Value::Str("w".into()));
        assert_eq!(
            items[0].1,
            Value::Tensor(TensorRef {
                storage: StorageRef { key: "0".into(), dtype: "bfloat16".into(), numel: 12 },
                offset: 0,
                shape: vec![3, 4],
                stride: vec![4, 1],
            })
        );
        assert_eq!(items[1].1, Value::Opaque("_io.BytesIO".into()));
    }

    #[test]
    fn protocol_4_forms() {
        // STACK_GLOBAL of a dtype, MEMOIZE, FRAME, a set, LONG1 and a negative BININT.
        let mut p = vec![0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0];
        p.extend(b"\x8c\x05torch\x94\x8c\x08bfloat16\x94\x93\x94");
        p.extend(b"\x8f(K\x01K\x02\x90\x8a\x02\x00\x80J\xff\xff\xff\xff\x87\x94.");
        let Value::Tuple(items) = load(&p).unwrap() else { panic!("a tuple") };
        assert_eq!(items, [Value::List(vec![Value::Int(1), Value::Int(2)]), Value::Int(-32768), Value::Int(-1)]);
    }

    /// `MetadataIndex(fqn='w', offset=(0, 8))` as protocol 4 writes a dataclass: NEWOBJ
    /// with no arguments, then BUILD with its fields; `build` is the BUILD opcodes used.
    fn metadata_index(build: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 4];
        p.extend(b"\x8c%torch.distributed.checkpoint.metadata\x94\x8c\rMetadataIndex\x93)\x81");
        p.extend(b"}(\x8c\x03fqn\x8c\x01w\x8c\x06offsetK\x00K\x08\x86u");
        p.extend(build);
        p.push(b'.');
        p
    }

    #[test]
    fn data_objects_take_their_state() {
        let value = load(&metadata_index(b"b")).unwrap();
        assert_eq!(value.class(), Some("torch.distributed.checkpoint.metadata.MetadataIndex"));
        assert_eq!(value.field("fqn"), Some(&Value::Str("w".into())));
        assert_eq!(value.field("offset"), Some(&Value::Tuple(vec![Value::Int(0), Value::Int(8)])));
        assert_eq!(value.field("index"), None);
        // Built twice, or given arguments, or of a class not allowed: errors.
        assert!(load(&metadata_index(b"b}b")).unwrap_err().to_string().contains("built twice"));
        let mut called = metadata_index(b"b");
        let at = called.windows(2).position(|w| w == b")\x81").unwrap();
        called.splice(at..at + 1, *b"K\x01\x85");
        assert!(load(&called).unwrap_err().to_string().contains("called with arguments"));
        let mut other = vec![0x80, 4];
        other.extend(b"\x8c\x02os\x94\x8c\x06system\x93)\x81.");
        assert!(load(&other).unwrap_err().to_string().contains("`os.system`"));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let data = state_dict();
        for end in 0..data.len() {
            assert!(load(&data[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn globals_outside_the_allow_list_are_named() {
        let error = load(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err().to_string();
        assert!(error.contains("`posix.system`"), "{error}");
        let error = load(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.").unwrap_err().to_string();
        assert!(error.contains("`builtins.eval`"), "{error}");
    }

    #[test]
    fn hostile_inputs_are_errors_not_panics_or_floods() {
        // Nesting deeper than the bound.
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert!(load(&deep).unwrap_err().to_string().contains("nested deeper"));
        // A list doubled through the memo again and again: bounded copies.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            bomb.extend(b"(h\x00h\x00lq\x00");
        }
        bomb.push(b'.');
        assert!(load(&bomb).is_err());
        // Lengths past the input, unknown memo entries, huge LONG_BINPUT indexes, a bad
        // persistent id, calling a non-callable, underflows, unknown opcodes.
        for bad in [
            &b"\x80\x02X\xff\xff\xff\xff."[..],
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x02h\x07.",
            b"\x80\x02Nr\xff\xff\xff\xffj\xfe\xff\xff\xff.",
            b"\x80\x02NQ.",
            b"\x80\x02K\x01)R.",
            b"\x80\x02s.",
            b"\x80\x02(u.",
            b"\x80\x02(.",
            b"\x80\x02t.",
            b"\x80\x02Na.",
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
            b"\x80\x02I1\n.",
            b"\x80\x09N.",
            b"",
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
        // Random bytes after a valid start: never a panic.
        let ops = b"()]}NKqhtaesuRbQX\x85\x86\x87\x88\x89\x8c\x93\x94.cJ";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut data = vec![0x80, 2];
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.push(ops[(seed % ops.len() as u64) as usize]);
            }
            let _ = load(&data);
        }
    }
}
