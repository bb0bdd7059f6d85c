//! The mutation engine: a small seeded RNG, byte-level mutations (the
//! havoc stage of AFL-style fuzzers, without coverage), and a JSON-aware
//! mutator for targets whose input is JSON.
//!
//! Byte mutations know nothing of the format, so they mostly test the
//! outer parsers; they are stacked (several per input) and mixed with
//! splicing so that some inputs keep a valid prefix and reach deeper code.
//! The JSON mutator parses a seed, changes its tree (a leaf replaced by a
//! hostile value, a key deleted, an unknown or known key added, a subtree
//! copied from another seed) and serializes it again, so the input stays
//! JSON and reaches the typed bodies and the engine behind them; sometimes
//! the text is then byte-mutated too.

use serde_json::{Map, Number, Value};

/// Largest input a mutation returns: inputs stay small enough that no run
/// can exhaust memory by their size alone.
pub const MAX_INPUT: usize = 1 << 20;

/// splitmix64: tiny, fast, and good enough to drive mutations; a run is
/// repeatable from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }

    /// An independent generator (for one input's mutations).
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// Bytes that break parsers: zero, all ones, the sign boundaries.
const INTERESTING_BYTES: &[u8] = &[0, 0xff, 0x7f, 0x80, 1, 0xfe, b'{', b'"', b'/', b'\\'];

/// Integers at the edges: what lengths, counts and offsets fail on.
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    2,
    u64::MAX,        // -1
    i32::MAX as u64, // 2^31 - 1
    u32::MAX as u64, // 2^32 - 1
    1 << 31,         // 2^31
    1 << 32,         // 2^32
    1 << 63,         // 2^63
    i64::MAX as u64, // 2^63 - 1
    (-2i64) as u64,  // -2
    (i32::MIN as i64) as u64,
    0x7fff,
    0xffff,
    0x10000,
    1 << 20,
    1 << 30,
    64,
    255,
    256,
];

/// Applies 1 to 8 byte-level mutations to `data` (stacked), drawing
/// splices from `others`; the result is at most [`MAX_INPUT`] bytes.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        mutate_once(rng, data, others);
    }
    data.truncate(MAX_INPUT);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    if data.is_empty() {
        // Nothing to change in place: grow it.
        let n = 1 + rng.below(16);
        data.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = data.len();
    match rng.below(16) {
        // Flip one bit.
        0 | 1 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Set a byte to an interesting value.
        2 => {
            let i = rng.below(len);
            data[i] = *rng.pick(INTERESTING_BYTES).unwrap_or(&0);
        }
        // Set a byte to a random value.
        3 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        // Add or subtract a little from a byte (a length or count off by some).
        4 => {
            let i = rng.below(len);
            let delta = 1 + rng.below(16) as u8;
            data[i] = if rng.one_in(2) {
                data[i].wrapping_add(delta)
            } else {
                data[i].wrapping_sub(delta)
            };
        }
        // Write an interesting u32 or u64, little- or big-endian.
        5 | 6 => {
            let v = *rng.pick(INTERESTING_INTS).unwrap_or(&0);
            write_int(rng, data, v);
        }
        // A length field off by one: the integer already at an offset, ±1..16.
        7 => {
            let wide = rng.one_in(2);
            let big = rng.one_in(2);
            let n = if wide { 8 } else { 4 };
            if len >= n {
                let at = rng.below(len - n + 1);
                let old = read_int(&data[at..at + n], big);
                let delta = 1 + rng.below(16) as u64;
                let new = if rng.one_in(2) {
                    old.wrapping_add(delta)
                } else {
                    old.wrapping_sub(delta)
                };
                put_int(&mut data[at..at + n], new, big);
            }
        }
        // Write the input's own length (±1) somewhere: what length prefixes hold.
        8 => {
            let v = (len as u64)
                .wrapping_add(rng.below(3) as u64)
                .wrapping_sub(1);
            write_int(rng, data, v);
        }
        // Insert random bytes or a run of one interesting byte.
        9 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(32);
            let bytes: Vec<u8> = if rng.one_in(2) {
                (0..n).map(|_| rng.next_u64() as u8).collect()
            } else {
                vec![*rng.pick(INTERESTING_BYTES).unwrap_or(&0); n]
            };
            data.splice(at..at, bytes);
        }
        // Delete a range.
        10 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        // Duplicate a range (in place or elsewhere).
        11 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(256));
            let chunk = data[at..at + n].to_vec();
            let to = if rng.one_in(2) {
                at + n
            } else {
                rng.below(len + 1)
            };
            data.splice(to..to, chunk);
        }
        // Overwrite a range with a copy of another range.
        12 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let to = rng.below(len - n + 1);
            let chunk = data[from..from + n].to_vec();
            data[to..to + n].copy_from_slice(&chunk);
        }
        // Truncate.
        13 => {
            let keep = rng.below(len);
            data.truncate(keep);
        }
        // Splice: our prefix, another seed's suffix.
        _ => match rng.pick(others) {
            Some(other) if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.below(len);
                data[i] ^= 0xff;
            }
        },
    }
}

fn read_int(bytes: &[u8], big: bool) -> u64 {
    let mut v = 0u64;
    if big {
        for &b in bytes {
            v = (v << 8) | u64::from(b);
        }
    } else {
        for &b in bytes.iter().rev() {
            v = (v << 8) | u64::from(b);
        }
    }
    v
}

fn put_int(out: &mut [u8], v: u64, big: bool) {
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        let shift = if big { 8 * (n - 1 - i) } else { 8 * i };
        *b = (v >> shift) as u8;
    }
}

/// Writes `v` as a u32 or u64, little- or big-endian, at a random offset
/// (growing the input when it is too short).
fn write_int(rng: &mut Rng, data: &mut Vec<u8>, v: u64) {
    let n = if rng.one_in(2) { 4 } else { 8 };
    let big = rng.one_in(3);
    if data.len() < n {
        data.resize(n, 0);
    }
    let at = rng.below(data.len() - n + 1);
    put_int(&mut data[at..at + n], v, big);
}

/// Writes a protobuf varint of an interesting value at a random offset:
/// the lengths and keys of protobuf-framed inputs.
pub fn write_varint(rng: &mut Rng, data: &mut Vec<u8>) {
    let v = match rng.below(3) {
        0 => *rng.pick(INTERESTING_INTS).unwrap_or(&0),
        1 => (data.len() as u64)
            .wrapping_add(rng.below(5) as u64)
            .wrapping_sub(2),
        _ => rng.next_u64() >> rng.below(64),
    };
    let mut bytes = Vec::with_capacity(10);
    prost::encoding::encode_varint(v, &mut bytes);
    let at = rng.below(data.len() + 1);
    let end = (at + bytes.len()).min(data.len());
    if rng.one_in(2) {
        data.splice(at..end, bytes);
    } else {
        data.splice(at..at, bytes);
    }
}

/// Numbers a hostile client sends where a count, size or rate goes.
fn hostile_number(rng: &mut Rng) -> Value {
    let f: f64 = match rng.below(20) {
        0 => 1e308,
        1 => -1e308,
        2 => 0.5,
        3 => -1.0,
        4 => -0.0,
        5 => 1e-308,
        6 => 1e19,
        7 => 2f64.powi(53) + 2.0,
        8 => 3.5,
        _ => {
            let ints: [i128; 12] = [
                0,
                1,
                2,
                3,
                -1,
                i32::MAX as i128,
                u32::MAX as i128,
                1 << 31,
                i64::MAX as i128,
                u64::MAX as i128,
                1_000_000_000,
                i64::MIN as i128,
            ];
            let v = *rng.pick(&ints).unwrap_or(&0);
            return if v < 0 {
                Value::Number(Number::from(v as i64))
            } else {
                Value::Number(Number::from(v as u64))
            };
        }
    };
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Strings a hostile client sends where a name, path or setting goes.
fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(16) {
        0 => "../../etc/passwd".into(),
        1 => "/etc/passwd".into(),
        2 => String::new(),
        3 => "a".repeat(1 + rng.below(100_000)),
        4 => "é\u{0}\u{202e}\u{fffd}".into(),
        5 => "models/m/3".into(),
        6 => "a/b".into(),
        7 => "cuda:99".into(),
        8 => "NaN".into(),
        9 => "-1".into(),
        10 => "a,b,,c".into(),
        _ => {
            let words = [
                "mlp",
                "linear_regression",
                "logistic_regression",
                "relu",
                "gelu",
                "mse",
                "cross_entropy",
                "bce",
                "adam",
                "adamw",
                "sgd",
                "cpu",
                "auto",
                "state",
                "model",
                "torchscript",
            ];
            rng.pick(&words).copied().unwrap_or("x").to_string()
        }
    }
}

/// Keys worth adding: every field the typed bodies and specs know (so a
/// mutation can turn an optional field on), plus unknown ones.
const KEYS: &[&str] = &[
    "job",
    "name",
    "version",
    "spec",
    "torchscript_path",
    "features",
    "label",
    "loss",
    "optimizer",
    "device",
    "seed",
    "batch_size",
    "keep_existing",
    "matrix",
    "precision",
    "op",
    "k",
    "n",
    "gramian",
    "intercept",
    "ridge",
    "of",
    "partition",
    "round",
    "epochs",
    "steps",
    "release",
    "state_id",
    "input_width",
    "blobs",
    "type",
    "hidden",
    "input_dim",
    "activation",
    "dropout",
    "num_classes",
    "output_dim",
    "lr",
    "momentum",
    "nesterov",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "size",
    "unknown_field",
    "__proto__",
];

/// A random value: scalars, or small nested arrays and objects (sometimes
/// deep).
pub fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let nest = depth < 3;
    match rng.below(if nest { 10 } else { 7 }) {
        0..=2 => hostile_number(rng),
        3 | 4 => Value::String(hostile_string(rng)),
        5 => Value::Null,
        6 => Value::Bool(rng.one_in(2)),
        7 => {
            if rng.one_in(8) {
                // Deep nesting: what recursive code fails on.
                let mut v = Value::Array(Vec::new());
                for _ in 0..(1 + rng.below(200)) {
                    v = Value::Array(vec![v]);
                }
                v
            } else {
                let n = rng.below(5);
                Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
            }
        }
        8 => {
            // A list of hidden widths or feature names, the usual arrays.
            let n = rng.below(6);
            if rng.one_in(2) {
                Value::Array((0..n).map(|_| hostile_number(rng)).collect())
            } else {
                Value::Array((0..n).map(|_| Value::String(hostile_string(rng))).collect())
            }
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(4) {
                let key = rng.pick(KEYS).copied().unwrap_or("k").to_string();
                m.insert(key, random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// One step along a path into a JSON tree.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every node's path (the root is the empty path).
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    if out.len() > 10_000 {
        return;
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                paths(item, prefix, out);
                prefix.pop();
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                prefix.push(Step::Key(k.clone()));
                paths(item, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    let mut node = v;
    for step in path {
        node = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Some node of `v` (any depth), cloned: material for cross-over.
fn random_subtree(rng: &mut Rng, v: &Value) -> Value {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let mut v = v.clone();
    match rng.pick(&all) {
        Some(path) => node_mut(&mut v, path).map(|n| n.take()).unwrap_or_default(),
        None => v,
    }
}

/// Applies 1 to 4 tree mutations to `v`; `others` are other seeds' trees
/// for cross-over.
pub fn mutate_tree(rng: &mut Rng, v: &mut Value, others: &[Value]) {
    for _ in 0..(1 + rng.below(4)) {
        let mut all = Vec::new();
        paths(v, &mut Vec::new(), &mut all);
        let leaves: Vec<&Vec<Step>> = all
            .iter()
            .filter(|p| !matches!(node_ref(v, p), Some(Value::Array(_) | Value::Object(_))))
            .collect();
        match rng.below(10) {
            // Replace a leaf (most often) or any node with a random value.
            0..=3 => {
                let path = if leaves.is_empty() || rng.one_in(4) {
                    rng.pick(&all).cloned()
                } else {
                    rng.pick(&leaves).map(|p| (*p).clone())
                };
                if let Some(node) = path.and_then(|p| node_mut(v, &p)) {
                    *node = random_value(rng, 1);
                }
            }
            // Nudge a number: off by one, negated, scaled far up.
            4 => {
                let numbers: Vec<&Vec<Step>> = leaves
                    .iter()
                    .copied()
                    .filter(|p| matches!(node_ref(v, p), Some(Value::Number(_))))
                    .collect();
                if let Some(p) = rng.pick(&numbers).map(|p| (*p).clone()) {
                    if let Some(node) = node_mut(v, &p) {
                        let x = node.as_f64().unwrap_or(0.0);
                        let y = match rng.below(5) {
                            0 => x + 1.0,
                            1 => x - 1.0,
                            2 => -x,
                            3 => x * 1e9,
                            _ => x + 0.5,
                        };
                        *node = if y.fract() == 0.0 && y.abs() < 9e15 {
                            Value::Number(Number::from(y as i64))
                        } else {
                            Number::from_f64(y).map_or(Value::Null, Value::Number)
                        };
                    }
                }
            }
            // Delete a key.
            5 => {
                let objects: Vec<Vec<Step>> = all
                    .iter()
                    .filter(|p| matches!(node_ref(v, p), Some(Value::Object(m)) if !m.is_empty()))
                    .cloned()
                    .collect();
                if let Some(p) = rng.pick(&objects).cloned() {
                    if let Some(Value::Object(m)) = node_mut(v, &p) {
                        let keys: Vec<String> = m.keys().cloned().collect();
                        if let Some(k) = rng.pick(&keys) {
                            m.remove(k);
                        }
                    }
                }
            }
            // Add a key (known or unknown) to an object.
            6 | 7 => {
                let objects: Vec<Vec<Step>> = all
                    .iter()
                    .filter(|p| matches!(node_ref(v, p), Some(Value::Object(_))))
                    .cloned()
                    .collect();
                let value = random_value(rng, 1);
                if let Some(p) = rng.pick(&objects).cloned() {
                    if let Some(Value::Object(m)) = node_mut(v, &p) {
                        let key = if rng.one_in(4) {
                            hostile_string(rng)
                        } else {
                            rng.pick(KEYS).copied().unwrap_or("k").to_string()
                        };
                        m.insert(key, value);
                    }
                }
            }
            // Cross-over: a subtree of another seed replaces a node.
            8 => {
                if let Some(other) = rng.pick(others) {
                    let sub = random_subtree(rng, other);
                    if let Some(p) = rng.pick(&all).cloned() {
                        if let Some(node) = node_mut(v, &p) {
                            *node = sub;
                        }
                    }
                }
            }
            // Grow an array with a copy of one of its items or a random value.
            _ => {
                let arrays: Vec<Vec<Step>> = all
                    .iter()
                    .filter(|p| matches!(node_ref(v, p), Some(Value::Array(_))))
                    .cloned()
                    .collect();
                let fresh = random_value(rng, 2);
                if let Some(p) = rng.pick(&arrays).cloned() {
                    if let Some(Value::Array(a)) = node_mut(v, &p) {
                        let item = match a.first() {
                            Some(first) if rng.one_in(2) => first.clone(),
                            _ => fresh,
                        };
                        a.push(item);
                    }
                }
            }
        }
    }
}

fn node_ref<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut node = v;
    for step in path {
        node = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get(k)?,
            (Step::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A JSON-aware mutation of `seed`: parsed, its tree mutated, serialized,
/// and one time in five byte-mutated as text too. A seed that is not JSON
/// gets byte mutations only.
pub fn mutate_json(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(seed) else {
        let mut out = seed.to_vec();
        mutate_bytes(rng, &mut out, others);
        return out;
    };
    let trees: Vec<Value> = others
        .iter()
        .filter_map(|o| serde_json::from_slice(o).ok())
        .collect();
    mutate_tree(rng, &mut v, &trees);
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    if rng.one_in(5) {
        mutate_bytes(rng, &mut out, others);
    }
    out.truncate(MAX_INPUT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_repeats_from_its_seed() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(a[0], a[1]);
        assert_eq!(Rng::new(1).below(0), 0);
    }

    #[test]
    fn byte_mutations_change_inputs_and_stay_bounded() {
        let mut rng = Rng::new(1);
        let seed = b"STK1\x05\x00\x00\x00{\"a\":1}".to_vec();
        let others = vec![seed.clone(), vec![0; MAX_INPUT + 10]];
        let mut changed = 0;
        for _ in 0..2000 {
            let mut data = seed.clone();
            mutate_bytes(&mut rng, &mut data, &others);
            assert!(data.len() <= MAX_INPUT);
            changed += usize::from(data != seed);
        }
        assert!(changed > 1800, "{changed} of 2000 changed");
        let mut empty = Vec::new();
        mutate_bytes(&mut rng, &mut empty, &[]);
        assert!(!empty.is_empty());
    }

    #[test]
    fn integers_round_trip_both_ways() {
        let mut b = [0u8; 4];
        put_int(&mut b, 0x0102_0304, true);
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(read_int(&b, true), 0x0102_0304);
        put_int(&mut b, 0x0102_0304, false);
        assert_eq!(b, [4, 3, 2, 1]);
        assert_eq!(read_int(&b, false), 0x0102_0304);
    }

    #[test]
    fn json_mutations_stay_json_most_of_the_time() {
        let mut rng = Rng::new(3);
        let seed = br#"{"job":"j","spec":{"type":"mlp","hidden":[4,4]},"features":["a","b"]}"#;
        let (mut json, mut differ) = (0, 0);
        for _ in 0..1000 {
            let out = mutate_json(&mut rng, seed, &[seed.to_vec()]);
            json += usize::from(serde_json::from_slice::<Value>(&out).is_ok());
            differ += usize::from(out != seed);
        }
        assert!(json > 700, "{json} of 1000 are JSON");
        assert!(differ > 900, "{differ} of 1000 changed");
    }
}
