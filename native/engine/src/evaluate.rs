//! A model's held-out scores on a cached dataset: the sums of
//! [`stoker_core::evaluation`], which the driver merges across partitions.
//!
//! The forward pass runs in eval mode without gradients, in the chunks
//! inference uses, so validation of a large partition needs no more device
//! memory than predicting it; the loss is summed on the device and read
//! once, the probabilities come to the host once per chunk (the metrics need
//! them there, and they are what `transform` would return).

use tch::{Kind, Tensor};

use stoker_core::evaluation::Evaluation;
use stoker_core::Result;

use crate::data::Dataset;
use crate::model::{Model, INFERENCE_CHUNK};
use crate::torch::{internal, to_vec, to_vec_f32};
use crate::train::loss;

/// Scores `model` on every row of `data`.
pub fn evaluate(model: &mut Model, data: &Dataset) -> Result<Evaluation> {
    model.check_width(data.width())?;
    let task = model.task();
    let _guard = tch::no_grad_guard();
    let rows = data.rows() as i64;
    let mut outputs = Vec::with_capacity(data.rows() * task.outputs());
    let mut loss_sum = Tensor::f_zeros([], (Kind::Double, model.device()))
        .map_err(internal("loss accumulator"))?;
    let mut start = 0;
    while start < rows {
        let len = INFERENCE_CHUNK.min(rows - start);
        let (x, y) = data
            .features
            .f_narrow(0, start, len)
            .and_then(|x| Ok((x, data.labels.f_narrow(0, start, len)?)))
            .map_err(internal("selecting validation rows"))?;
        let out = model.logits(&x, false)?;
        let chunk_loss = loss(model.loss(), task, &out, &y)?;
        loss_sum = chunk_loss
            .f_to_kind(Kind::Double)
            .and_then(|l| l.f_mul_scalar(len as f64))
            .and_then(|l| loss_sum.f_add(&l))
            .map_err(internal("loss accumulator"))?;
        outputs.extend(to_vec_f32(&model.outputs_of(out)?)?);
        start += len;
    }
    let labels: Vec<f64> = to_vec(&data.labels)?;
    let loss_sum = loss_sum
        .f_double_value(&[])
        .map_err(internal("reading the validation loss"))?;
    Evaluation::score(task, &outputs, &labels, loss_sum)
}
