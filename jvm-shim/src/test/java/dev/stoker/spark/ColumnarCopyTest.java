package dev.stoker.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stoker.jni.IpcBuffer;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.Float8Vector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.ipc.ArrowStreamReader;
import org.apache.spark.sql.execution.vectorized.OnHeapColumnVector;
import org.apache.spark.sql.stoker.ColumnarBatches;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.vectorized.ColumnVector;
import org.apache.spark.sql.vectorized.ColumnarBatch;
import org.junit.jupiter.api.Test;
import scala.jdk.javaapi.CollectionConverters;

/**
 * The columnar copy into Arrow, value by value: batches whose sizes are not multiples of
 * eight, cut into record batches at other unaligned places, with nulls on both sides of
 * each cut, must come out as the same values and nulls in the same rows.
 */
class ColumnarCopyTest {
  private static final StructType SCHEMA = new StructType()
      .add("f", DataTypes.FloatType).add("d", DataTypes.DoubleType)
      .add("i", DataTypes.IntegerType).add("l", DataTypes.LongType);

  /** Row r of the whole input: null where (r + column) % 7 == 0 in columns f and i. */
  private static boolean isNull(int row, int column) {
    return (column == 0 || column == 2) && (row + column) % 7 == 0;
  }

  private static double value(int row, int column) {
    return row * 10 + column + 0.5 * (column % 2 == 0 ? 1 : 0);
  }

  /** A batch of `n` rows starting at row `first` of the whole input. */
  private static ColumnarBatch batch(int first, int n) {
    ColumnVector[] columns = new ColumnVector[4];
    for (int c = 0; c < 4; c++) {
      OnHeapColumnVector v = new OnHeapColumnVector(n, SCHEMA.fields()[c].dataType());
      for (int i = 0; i < n; i++) {
        int r = first + i;
        if (isNull(r, c)) {
          v.putNull(i);
        } else if (c == 0) {
          v.putFloat(i, (float) value(r, c));
        } else if (c == 1) {
          v.putDouble(i, value(r, c));
        } else if (c == 2) {
          v.putInt(i, (int) value(r, c));
        } else {
          v.putLong(i, (long) value(r, c));
        }
      }
      columns[c] = v;
    }
    return new ColumnarBatch(columns, n);
  }

  /** Each record batch's rows, as [column][row] values (null for nulls), all in order. */
  private static List<Double[]> read(IpcBuffer ipc, int columns) throws IOException {
    List<Double[]> rows = new ArrayList<>();
    try (RootAllocator allocator = new RootAllocator();
        ArrowStreamReader reader = new ArrowStreamReader(
            new ByteArrayInputStream(ipc.array(), 0, ipc.length()), allocator)) {
      VectorSchemaRoot root = reader.getVectorSchemaRoot();
      while (reader.loadNextBatch()) {
        for (int i = 0; i < root.getRowCount(); i++) {
          Double[] row = new Double[columns];
          for (int c = 0; c < columns; c++) {
            FieldVector v = root.getVector(c);
            if (v.isNull(i)) {
              continue;
            }
            if (v instanceof Float4Vector f) {
              row[c] = (double) f.get(i);
            } else if (v instanceof Float8Vector d) {
              row[c] = d.get(i);
            } else if (v instanceof IntVector n) {
              row[c] = (double) n.get(i);
            } else {
              row[c] = (double) ((BigIntVector) v).get(i);
            }
          }
          rows.add(row);
        }
        assertTrue(root.getRowCount() <= 6, "record batches of at most batchRows rows");
      }
    }
    return rows;
  }

  private static Double expected(int row, int column) {
    if (isNull(row, column)) {
      return null;
    }
    double v = value(row, column);
    return column == 0 ? (double) (float) v : column >= 2 ? (double) (long) v : v;
  }

  @Test
  void unalignedBatchesAndCutsKeepEveryValueAndNull() throws IOException {
    int[] sizes = {5, 13, 9, 1, 17};
    List<ColumnarBatch> batches = new ArrayList<>();
    int total = 0;
    for (int n : sizes) {
      batches.add(batch(total, n));
      total += n;
    }
    scala.Tuple2<IpcBuffer, Object> out = ColumnarBatches.toIpcStream(
        CollectionConverters.asScala(batches.iterator()), SCHEMA, "UTC", 6);
    assertEquals((long) total, out._2());
    List<Double[]> rows = read(out._1(), 4);
    assertEquals(total, rows.size());
    for (int r = 0; r < total; r++) {
      for (int c = 0; c < 4; c++) {
        assertEquals(expected(r, c), rows.get(r)[c], "row " + r + " column " + c);
      }
    }
  }

  @Test
  void aSliceCopiesSomeColumnsInTheirOrder() throws IOException {
    ColumnarBatch b = batch(100, 29);
    StructType schema = new StructType().add("l", DataTypes.LongType).add("f", DataTypes.FloatType);
    IpcBuffer ipc = ColumnarBatches.sliceToIpcStream(b, new int[] {3, 0}, schema, 3, 6, "UTC");
    List<Double[]> rows = read(ipc, 2);
    assertEquals(6, rows.size());
    for (int i = 0; i < 6; i++) {
      assertEquals(expected(103 + i, 3), rows.get(i)[0], "row " + i);
      assertEquals(expected(103 + i, 0), rows.get(i)[1], "row " + i);
    }
  }
}
