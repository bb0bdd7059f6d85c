package org.apache.spark.stoker

import org.apache.spark.SparkEnv

/**
 * This JVM's Spark local directories (`spark.local.dir`, or the container's on YARN and
 * Kubernetes), which the block manager creates for the JVM and deletes when it stops.
 * In this package because the block manager's directories are `private[spark]`.
 */
object LocalDirs {
  /** The first of this JVM's block manager directories, if Spark runs here. */
  def first(): Option[String] =
    Option(SparkEnv.get).flatMap(env => Option(env.blockManager))
      .flatMap(_.diskBlockManager.localDirs.headOption)
      .map(_.getAbsolutePath)
}
