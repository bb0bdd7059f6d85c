//! Typed views over numeric Arrow arrays, so the conversion loops in
//! [`crate::features`] and [`crate::labels`] run once per column and type
//! instead of matching on the type for every value.

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};

use crate::error::{Error, Result};

/// A value that can be widened or narrowed to the f32/f64 the engine uses.
pub trait Number: Copy {
    fn to_f64(self) -> f64;

    /// The float32 the engine sees: through f64, as every value always went (an
    /// i64 rounded straight to f32 can differ in its last bit).
    #[inline]
    fn to_f32(self) -> f32 {
        self.to_f64() as f32
    }
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}
number!(i8, i16, i32, i64, u8, u16, u32, u64, f64);

impl Number for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }

    /// Itself: f32 to f64 and back is exact.
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Number for half::f16 {
    #[inline]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
}

/// The float a dense buffer holds: f32 for training and inference, f64 for
/// the matrix work that asks for it. Values reach it from f64 (what the
/// readers yield) or straight from their Arrow type.
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// The name errors use ("float32").
    const NAME: &'static str;
    fn of<T: Number>(x: T) -> Self;
    fn from_f64(v: f64) -> Self;
    fn finite(self) -> bool;
    fn one() -> Self;
}

impl Element for f32 {
    const NAME: &'static str = "float32";
    #[inline]
    fn of<T: Number>(x: T) -> f32 {
        x.to_f32()
    }
    #[inline]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    #[inline]
    fn finite(self) -> bool {
        self.is_finite()
    }
    fn one() -> f32 {
        1.0
    }
}

impl Element for f64 {
    const NAME: &'static str = "float64";
    #[inline]
    fn of<T: Number>(x: T) -> f64 {
        x.to_f64()
    }
    #[inline]
    fn from_f64(v: f64) -> f64 {
        v
    }
    #[inline]
    fn finite(self) -> bool {
        self.is_finite()
    }
    fn one() -> f64 {
        1.0
    }
}

/// A numeric array's values, borrowed with their concrete type.
pub enum Values<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F16(&'a [half::f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bool(&'a BooleanArray),
}

/// Whether stoker accepts this Arrow type as a numeric feature or label.
pub fn is_numeric(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
    )
}

/// Whether values of this type are whole numbers (the default-loss rule:
/// integer labels mean classification).
pub fn is_integer(dt: &DataType) -> bool {
    dt.is_integer() || matches!(dt, DataType::Boolean)
}

impl<'a> Values<'a> {
    /// Borrows the values of a numeric array; `what` names the column for the
    /// error when the type is not numeric.
    pub fn of(array: &'a dyn Array, what: &str) -> Result<Values<'a>> {
        Ok(match array.data_type() {
            DataType::Int8 => Values::I8(array.as_primitive::<Int8Type>().values()),
            DataType::Int16 => Values::I16(array.as_primitive::<Int16Type>().values()),
            DataType::Int32 => Values::I32(array.as_primitive::<Int32Type>().values()),
            DataType::Int64 => Values::I64(array.as_primitive::<Int64Type>().values()),
            DataType::UInt8 => Values::U8(array.as_primitive::<UInt8Type>().values()),
            DataType::UInt16 => Values::U16(array.as_primitive::<UInt16Type>().values()),
            DataType::UInt32 => Values::U32(array.as_primitive::<UInt32Type>().values()),
            DataType::UInt64 => Values::U64(array.as_primitive::<UInt64Type>().values()),
            DataType::Float16 => Values::F16(array.as_primitive::<Float16Type>().values()),
            DataType::Float32 => Values::F32(array.as_primitive::<Float32Type>().values()),
            DataType::Float64 => Values::F64(array.as_primitive::<Float64Type>().values()),
            DataType::Boolean => Values::Bool(array.as_boolean()),
            other => {
                return Err(Error::invalid(format!(
                    "{what} has type {other}, expected a numeric type (int, float or boolean)"
                )))
            }
        })
    }

    /// Calls `f(i, value)` for `i` in `range`, with the type resolved once.
    #[inline]
    pub fn for_each(&self, range: std::ops::Range<usize>, mut f: impl FnMut(usize, f64)) {
        fn run<T: Number>(v: &[T], r: std::ops::Range<usize>, f: &mut impl FnMut(usize, f64)) {
            for (i, x) in v[r.clone()].iter().enumerate() {
                f(r.start + i, x.to_f64());
            }
        }
        match self {
            Values::I8(v) => run(v, range, &mut f),
            Values::I16(v) => run(v, range, &mut f),
            Values::I32(v) => run(v, range, &mut f),
            Values::I64(v) => run(v, range, &mut f),
            Values::U8(v) => run(v, range, &mut f),
            Values::U16(v) => run(v, range, &mut f),
            Values::U32(v) => run(v, range, &mut f),
            Values::U64(v) => run(v, range, &mut f),
            Values::F16(v) => run(v, range, &mut f),
            Values::F32(v) => run(v, range, &mut f),
            Values::F64(v) => run(v, range, &mut f),
            Values::Bool(b) => {
                for i in range {
                    f(i, if b.value(i) { 1.0 } else { 0.0 });
                }
            }
        }
    }
}

impl Values<'_> {
    /// The first value that is not finite as an `E` (NaN, an infinity, or,
    /// for float32, a float64 beyond its range), with its index. Integers and
    /// booleans always are.
    pub fn first_non_finite_as<E: Element>(&self) -> Option<(usize, f64)> {
        fn find<T: Number, E: Element>(v: &[T]) -> Option<(usize, f64)> {
            // Chunks are checked without an early exit, which the compiler
            // vectorizes; only a chunk holding a bad value is searched.
            const CHUNK: usize = 64;
            for (c, chunk) in v.chunks(CHUNK).enumerate() {
                if !chunk.iter().fold(true, |ok, x| ok & E::of(*x).finite()) {
                    let i = chunk.iter().position(|x| !E::of(*x).finite())?;
                    return Some((c * CHUNK + i, chunk[i].to_f64()));
                }
            }
            None
        }
        match self {
            Values::F16(v) => find::<_, E>(v),
            Values::F32(v) => find::<_, E>(v),
            Values::F64(v) => find::<_, E>(v),
            _ => None,
        }
    }

    /// Writes the values at `rows` into one place of each row of `block`: the
    /// value of row `rows.start + i` to `block[i * width + offset]`.
    #[inline]
    pub fn write_strided<E: Element>(
        &self,
        rows: std::ops::Range<usize>,
        block: &mut [E],
        width: usize,
        offset: usize,
    ) {
        fn run<T: Number, E: Element>(v: &[T], block: &mut [E], width: usize, offset: usize) {
            for (row, x) in block.chunks_exact_mut(width).zip(v) {
                row[offset] = E::of(*x);
            }
        }
        match self {
            Values::I8(v) => run(&v[rows], block, width, offset),
            Values::I16(v) => run(&v[rows], block, width, offset),
            Values::I32(v) => run(&v[rows], block, width, offset),
            Values::I64(v) => run(&v[rows], block, width, offset),
            Values::U8(v) => run(&v[rows], block, width, offset),
            Values::U16(v) => run(&v[rows], block, width, offset),
            Values::U32(v) => run(&v[rows], block, width, offset),
            Values::U64(v) => run(&v[rows], block, width, offset),
            Values::F16(v) => run(&v[rows], block, width, offset),
            Values::F32(v) => run(&v[rows], block, width, offset),
            Values::F64(v) => run(&v[rows], block, width, offset),
            Values::Bool(b) => {
                for (row, i) in block.chunks_exact_mut(width).zip(rows) {
                    row[offset] = if b.value(i) { E::one() } else { E::default() };
                }
            }
        }
    }
}

/// The first null in `range` of a validity buffer, if any.
pub fn first_null(nulls: Option<&NullBuffer>, range: std::ops::Range<usize>) -> Option<usize> {
    let nulls = nulls?;
    if nulls.null_count() == 0 {
        return None;
    }
    range.into_iter().find(|&i| nulls.is_null(i))
}

/// Describes a non-finite value for an error message.
pub fn describe_non_finite(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}
