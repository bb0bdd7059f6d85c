package org.apache.spark.sql.stoker

import java.io.ByteArrayInputStream

import dev.stoker.jni.IpcBuffer

import scala.collection.mutable.ArrayBuffer

import org.apache.arrow.memory.BufferAllocator
import org.apache.arrow.vector.{FieldVector, Float4Vector, Float8Vector, VectorSchemaRoot}
import org.apache.arrow.vector.complex.ListVector
import org.apache.arrow.vector.ipc.{ArrowStreamReader, ArrowStreamWriter}
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.{DataFrame, Dataset, SparkSession}
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.classic
import org.apache.spark.sql.execution.arrow.ArrowWriter
import org.apache.spark.sql.types.StructType
import org.apache.spark.sql.util.ArrowUtils

/**
 * Rows to Arrow IPC streams and predictions back, with Spark's own Arrow writer (the one
 * PySpark's Arrow path uses), so every Spark type converts the way Spark converts it.
 * This object lives in Spark's package because the row-level APIs it needs are
 * `private[sql]`; nothing else of stoker does.
 */
object ArrowBatches {

  /** The rows of a DataFrame as Catalyst rows (no per-row conversion to `Row`). */
  def internalRows(df: Dataset[_]): RDD[InternalRow] = requireClassic(df).queryExecution.toRdd

  /** A DataFrame over Catalyst rows that match `schema`. */
  def createDataFrame(spark: SparkSession, rows: RDD[InternalRow], schema: StructType): DataFrame =
    spark.asInstanceOf[classic.SparkSession].internalCreateDataFrame(rows, schema)

  /** The classic Dataset behind `df`; Spark Connect DataFrames are refused clearly. */
  def requireClassic(df: Dataset[_]): classic.Dataset[_] = df match {
    case c: classic.Dataset[_] => c
    case other =>
      throw new dev.stoker.InvalidInputException(
        s"stoker needs a classic Spark session, not ${other.getClass.getName} (Spark Connect " +
          "is not supported yet)")
  }

  /**
   * Writes rows as one Arrow IPC stream of record batches of at most `batchRows` rows.
   * Returns the stream and its row count. The writer copies each row's values, so
   * reused row objects (UnsafeRow) are safe.
   */
  def toIpcStream(
      rows: Iterator[InternalRow],
      schema: StructType,
      timeZone: String,
      batchRows: Int): (IpcBuffer, Long) = {
    val writer = ArrowWriter.create(schema, timeZone, true, false)
    val root = writer.root
    var total = 0L
    val ipc = try ipcStream(root, batchBytes(schema, batchRows)) { stream =>
      var inBatch = 0
      while (rows.hasNext) {
        writer.write(rows.next())
        inBatch += 1
        total += 1
        if (inBatch == batchRows) {
          writer.finish()
          stream.writeBatch()
          writer.reset()
          inBatch = 0
        }
      }
      if (inBatch > 0) {
        writer.finish()
        stream.writeBatch()
      }
    } finally {
      root.close()
    }
    (ipc, total)
  }

  /**
   * About the bytes of one batch of `rows` rows: the values at Spark's default size
   * for each type (4 per float, 8 per double), a validity bit each, and a little per
   * column for the stream's framing.
   */
  private[stoker] def batchBytes(schema: StructType, rows: Int): Long =
    rows.toLong * (schema.defaultSize + (schema.length + 7) / 8) + 64L * schema.length

  /** An Arrow IPC stream of `root`'s schema and the batches `write` writes from it. */
  private[stoker] def ipcStream(root: VectorSchemaRoot, expectedBytes: Long)(
      write: ArrowStreamWriter => Unit): IpcBuffer = {
    // Sized for what the caller expects (capped: a guess must not reserve a huge array
    // for a stream that turns out small), then grown by doubling.
    val out = new IpcBuffer(math.min(expectedBytes + 4096, 64L << 20).toInt)
    val stream = new ArrowStreamWriter(root, null, out)
    stream.start()
    write(stream)
    stream.end()
    out
  }

  /** What the server sends back for a batch: one prediction per row, maybe probabilities. */
  final case class Predictions(prediction: Array[Double], probability: Option[Array[Array[Double]]])

  /**
   * Reads the server's prediction stream: a float64 `prediction` column and, for
   * classifiers, a `list<float32>` `probability` column.
   */
  def readPredictions(ipc: Array[Byte]): Predictions = {
    val allocator: BufferAllocator =
      ArrowUtils.rootAllocator.newChildAllocator("stoker-predictions", 0, Long.MaxValue)
    try {
      val reader = new ArrowStreamReader(new ByteArrayInputStream(ipc), allocator)
      try {
        val root = reader.getVectorSchemaRoot
        // Unboxed builders: an ArrayBuffer[Double] would box every prediction.
        val prediction = Array.newBuilder[Double]
        val probability = ArrayBuffer.empty[Array[Double]]
        var hasProbability = false
        while (reader.loadNextBatch()) {
          val n = root.getRowCount
          val p = root.getVector("prediction").asInstanceOf[Float8Vector]
          prediction.sizeHint(prediction.knownSize + n)
          var i = 0
          while (i < n) {
            prediction += (if (p.isNull(i)) Double.NaN else p.get(i))
            i += 1
          }
          val probs: FieldVector = root.getVector("probability")
          if (probs != null) {
            hasProbability = true
            val list = probs.asInstanceOf[ListVector]
            val values = list.getDataVector.asInstanceOf[Float4Vector]
            i = 0
            while (i < n) {
              val start = list.getElementStartIndex(i)
              val end = list.getElementEndIndex(i)
              val row = new Array[Double](end - start)
              var j = start
              while (j < end) {
                row(j - start) = values.get(j).toDouble
                j += 1
              }
              probability += row
              i += 1
            }
          }
        }
        Predictions(prediction.result(), if (hasProbability) Some(probability.toArray) else None)
      } finally {
        reader.close()
      }
    } finally {
      allocator.close()
    }
  }
}
