package org.apache.spark.sql.stoker

import dev.stoker.jni.IpcBuffer
import org.apache.arrow.vector.{BigIntVector, Float4Vector, Float8Vector, IntVector,
  VectorSchemaRoot}
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.Dataset
import org.apache.spark.sql.execution.{ColumnarToRowExec, InputAdapter, SparkPlan,
  WholeStageCodegenExec}
import org.apache.spark.sql.execution.adaptive.AdaptiveSparkPlanExec
import org.apache.spark.sql.types._
import org.apache.spark.sql.util.ArrowUtils
import org.apache.spark.sql.vectorized.{ColumnarBatch, ColumnVector}

/**
 * The columnar fast path for training data: when a DataFrame's plan is a columnar scan
 * turned into rows (a cached DataFrame's in-memory scan, a Parquet or ORC scan), its
 * column vectors are copied into Arrow a column at a time instead of row by row through
 * Spark's Arrow writer, which was most of a partition's feeding time (docs/benchmarks.md,
 * benchmark 1). Only flat numeric columns qualify; anything else takes the row path.
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

  /** Copies `n` values from row `from` of `src` to row `to` of `dst`, nulls as nulls. */
  private def copy(src: ColumnVector, dst: org.apache.arrow.vector.FieldVector, from: Int,
      to: Int, n: Int): Unit = {
    val nulls = src.hasNull
    var i = 0
    dst match {
      case v: Float4Vector =>
        while (i < n) {
          if (nulls && src.isNullAt(from + i)) v.setNull(to + i)
          else v.setSafe(to + i, src.getFloat(from + i))
          i += 1
        }
      case v: Float8Vector =>
        while (i < n) {
          if (nulls && src.isNullAt(from + i)) v.setNull(to + i)
          else v.setSafe(to + i, src.getDouble(from + i))
          i += 1
        }
      case v: IntVector =>
        while (i < n) {
          if (nulls && src.isNullAt(from + i)) v.setNull(to + i)
          else v.setSafe(to + i, src.getInt(from + i))
          i += 1
        }
      case v: BigIntVector =>
        while (i < n) {
          if (nulls && src.isNullAt(from + i)) v.setNull(to + i)
          else v.setSafe(to + i, src.getLong(from + i))
          i += 1
        }
      case other =>
        throw new IllegalStateException(s"no columnar copy into ${other.getClass.getName}")
    }
  }
}
