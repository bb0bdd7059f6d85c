package dev.stoker.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;
import scala.Option;

/** Where a round's states are merged: on the driver unless they would crowd it. */
class AggregationDepthTest {
  private static final long GIB = 1L << 30;
  private static final long MB = 1L << 20;

  private static int depth(int partitions, Long stateBytes, long maxResult) {
    Option<Object> bytes = stateBytes == null ? Option.empty() : Option.apply(stateBytes);
    return Training.aggregationDepth(partitions, bytes, maxResult);
  }

  @Test
  void theDriverMergesWhatStaysWellUnderItsResultLimit() {
    assertEquals(1, depth(8, 115 * MB, GIB));
    assertEquals(1, depth(64, MB, GIB));
    assertEquals(2, depth(9, 115 * MB, GIB));
    assertEquals(2, depth(16, 115 * MB, GIB));
    assertEquals(2, depth(65, MB, GIB));
    assertEquals(1, depth(32, 115 * MB, 0));
  }

  @Test
  void beforeTheFirstStateOnlyFewPartitionsMergeOnTheDriver() {
    assertEquals(1, depth(8, null, GIB));
    assertEquals(2, depth(9, null, GIB));
  }

  @Test
  void twoPartitionsHaveNoLevelToSpreadOver() {
    assertEquals(1, depth(2, 600 * MB, GIB));
  }
}
