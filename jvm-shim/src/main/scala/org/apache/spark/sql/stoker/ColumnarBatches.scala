package org.apache.spark.sql.stoker

import dev.stoker.jni.IpcBuffer
import org.apache.arrow.memory.ArrowBuf
import org.apache.arrow.vector.{BigIntVector, BitVectorHelper, FieldVector, Float4Vector,
  Float8Vector, IntVector, VectorSchemaRoot}
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.Dataset
import org.apache.spark.sql.execution.{ColumnarToRowExec, InputAdapter, SparkPlan,
  WholeStageCodegenExec}
import org.apache.spark.sql.execution.adaptive.AdaptiveSparkPlanExec
import org.apache.spark.sql.types._
import org.apache.spark.sql.util.ArrowUtils
import org.apache.spark.sql.vectorized.{ColumnarBatch, ColumnVector}
import org.apache.spark.unsafe.Platform

/**
 * The columnar fast path for training and inference: when a DataFrame's plan is a
 * columnar scan turned into rows (a cached DataFrame's in-memory scan, a Parquet or ORC
 * scan), its column vectors are copied into Arrow a column at a time instead of row by
 * row through Spark's Arrow writer, which was most of a partition's feeding time
 * (docs/benchmarks.md, benchmark 1). Only flat numeric columns qualify; anything else
 * takes the row path.
 */
object ColumnarBatches {

  /** Types copied column-wise; others (vectors, arrays, small integers) use rows. */
  def copyable(t: DataType): Boolean = t match {
    case FloatType | DoubleType | IntegerType | LongType => true
    case _ => false
  }

  /**
   * The DataFrame's batches when its executed plan is a columnar scan whose output is
   * exactly the DataFrame's columns (names, types, order), all of copyable types.
   */
  def of(df: Dataset[_]): Option[RDD[ColumnarBatch]] =
    if (ArrowBatches.requireClassic(df).schema.fields.forall(f => copyable(f.dataType))) scan(df)
    else None

  /**
   * The DataFrame's batches when its executed plan is a columnar scan whose output is
   * exactly the DataFrame's columns, whatever their types (a caller copies only some of
   * them and reads the rest as rows).
   */
  def scan(df: Dataset[_]): Option[RDD[ColumnarBatch]] = {
    val ds = ArrowBatches.requireClassic(df)
    val schema = ds.schema
    columnarScan(ds.queryExecution.executedPlan).filter { s =>
      s.output.map(a => (a.name, a.dataType)) == schema.fields.toSeq.map(f => (f.name, f.dataType))
    }.map(_.executeColumnar())
  }

  /**
   * The columnar scan under `plan` when `plan` is that scan, or the scan turned into
   * rows and nothing else: its batches hold exactly `plan`'s output columns.
   */
  def columnarScan(plan: SparkPlan): Option[SparkPlan] = plan match {
    // With adaptive execution the plan is not final before it runs: a scan with no
    // exchange above it is the whole current plan, before any transition to rows.
    case a: AdaptiveSparkPlanExec => columnarScan(a.executedPlan)
    case WholeStageCodegenExec(child) => columnarScan(child)
    case ColumnarToRowExec(InputAdapter(child)) if child.supportsColumnar => Some(child)
    case ColumnarToRowExec(child) if child.supportsColumnar => Some(child)
    case leaf if leaf.children.isEmpty && leaf.supportsColumnar => Some(leaf)
    case _ => None
  }

  /**
   * Writes the batches as one Arrow IPC stream of record batches of at most
   * `batchRows` rows (the same stream [[ArrowBatches.toIpcStream]] writes for the same
   * rows). Returns the stream and its row count.
   */
  def toIpcStream(
      batches: Iterator[ColumnarBatch],
      schema: StructType,
      timeZone: String,
      batchRows: Int): (IpcBuffer, Long) =
    write(batches.map(b => Slice(b, 0, b.numRows())), schema.indices.toArray, schema, timeZone,
      batchRows)

  /**
   * Rows `from` until `from + n` of the batch's `columns` (ordinals in the batch), named
   * and typed as `schema`, as one Arrow IPC stream of one record batch.
   */
  def sliceToIpcStream(
      batch: ColumnarBatch,
      columns: Array[Int],
      schema: StructType,
      from: Int,
      n: Int,
      timeZone: String): IpcBuffer =
    write(Iterator.single(Slice(batch, from, n)), columns, schema, timeZone, math.max(n, 1))._1

  private final case class Slice(batch: ColumnarBatch, from: Int, rows: Int)

  private def write(
      slices: Iterator[Slice],
      columns: Array[Int],
      schema: StructType,
      timeZone: String,
      batchRows: Int): (IpcBuffer, Long) = {
    val allocator = ArrowUtils.rootAllocator.newChildAllocator("stoker-columnar", 0, Long.MaxValue)
    val root = VectorSchemaRoot.create(
      ArrowUtils.toArrowSchema(schema, timeZone, true, false), allocator)
    var total = 0L
    val expected = ArrowBatches.batchBytes(schema, batchRows)
    val ipc = try ArrowBatches.ipcStream(root, expected) { stream =>
      var filled = 0
      def flush(): Unit = if (filled > 0) {
        root.getFieldVectors.forEach(_.setValueCount(filled))
        root.setRowCount(filled)
        stream.writeBatch()
        filled = 0
      }
      // Sized for a whole batch once and reused: the vectors neither grow by doubling
      // (a reallocation and copy each time) nor are freed and allocated again per batch.
      root.getFieldVectors.forEach { v => v.setInitialCapacity(batchRows); v.allocateNew() }
      while (slices.hasNext) {
        val slice = slices.next()
        val end = slice.from + slice.rows
        var from = slice.from
        while (from < end) {
          if (filled == batchRows) {
            flush()
            root.getFieldVectors.forEach(_.reset())
          }
          val take = math.min(end - from, batchRows - filled)
          var c = 0
          while (c < columns.length) {
            copy(slice.batch.column(columns(c)), root.getVector(c), from, filled, take)
            c += 1
          }
          filled += take
          from += take
          total += take
        }
      }
      flush()
    } finally {
      root.close()
      allocator.close()
    }
    (ipc, total)
  }

  /**
   * Copies `n` values from row `from` of `src` to row `to` of `dst`, nulls as nulls: the
   * values in bulk (one array copy out of the column vector, one memory copy into the
   * Arrow buffer), then the validity bits. Per-value getters and `setSafe` were most of
   * the executor's time in `transform` of a cached table.
   */
  private def copy(src: ColumnVector, dst: FieldVector, from: Int, to: Int, n: Int): Unit = {
    if (n == 0) return
    // The raw copy below writes [to, to + n) values of `width` bytes at the buffer's
    // address: the vector must hold them (it is allocated for a whole batch up front).
    require(to >= 0 && dst.getValueCapacity >= to + n &&
      dst.getValidityBuffer.capacity() >= (to + n + 7) / 8,
      s"Arrow vector of ${dst.getValueCapacity} values cannot take rows $to until ${to + n}")
    // The values as a Java array (the column vector copies them out in bulk), where
    // its elements start, and their width in bytes.
    val (values, base, width): (AnyRef, Long, Int) = dst match {
      case _: Float4Vector => (src.getFloats(from, n), Platform.FLOAT_ARRAY_OFFSET.toLong, 4)
      case _: Float8Vector => (src.getDoubles(from, n), Platform.DOUBLE_ARRAY_OFFSET.toLong, 8)
      case _: IntVector => (src.getInts(from, n), Platform.INT_ARRAY_OFFSET.toLong, 4)
      case _: BigIntVector => (src.getLongs(from, n), Platform.LONG_ARRAY_OFFSET.toLong, 8)
      case other =>
        throw new IllegalStateException(s"no columnar copy into ${other.getClass.getName}")
    }
    Platform.copyMemory(values, base, null, dst.getDataBuffer.memoryAddress() + width.toLong * to,
      width.toLong * n)
    val validity = dst.getValidityBuffer
    setValid(validity, to, n)
    if (src.hasNull) {
      var i = 0
      while (i < n) {
        if (src.isNullAt(from + i)) BitVectorHelper.unsetBit(validity, to + i)
        i += 1
      }
    }
  }

  /** Sets validity bits `to` until `to + n`: whole bytes at once, bit by bit at the ends. */
  private def setValid(validity: ArrowBuf, to: Int, n: Int): Unit = {
    val end = to + n
    var i = to
    while (i < end && (i & 7) != 0) {
      BitVectorHelper.setBit(validity, i)
      i += 1
    }
    val bytes = (end - i) / 8
    if (bytes > 0) {
      // Within the buffer: it holds a bit for each of the vector's values, and
      // i / 8 + bytes <= end / 8, checked against its capacity by copy's caller.
      Platform.setMemory(validity.memoryAddress() + i / 8, 0xff.toByte, bytes.toLong)
      i += bytes * 8
    }
    while (i < end) {
      BitVectorHelper.setBit(validity, i)
      i += 1
    }
  }
}
