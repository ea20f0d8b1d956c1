"""The chapter's softmax regression on real Fashion-MNIST, once per variant and stress regime.

    softmax-bench train                                   # every variant, the chapter's setting, 10 epochs
    softmax-bench train --variant naive --json            # one variant; a JSON object per run on stdout
    softmax-bench train --regime raw-pixels --regime high-lr
    softmax-bench train --regime all --device cuda        # standard, raw-pixels, high-lr, low-precision
    softmax-bench train --quick                           # 2 epochs
    softmax-bench train --resume results/<run>            # finish an interrupted run

The recipe is the chapter's, step for step: images flattened to 784 features, W 784x10 drawn from
N(0, 0.01) with requires_grad, b = 0, net(X) = softmax(XW + b), loss = the variant's cross_entropy on the
logits XW + b, minibatch SGD with lr 0.1 and batch 256 where the summed loss is back-propagated and the
gradient divided by the batch size (d2l.sgd), 10 epochs reshuffled each epoch (a generator seeded by
--seed), train loss/accuracy accumulated over the epoch's minibatches (Accumulator / train_epoch_ch3),
test accuracy after every epoch (evaluate_accuracy), then predictions on the first test images with their
label names (predict_ch3). The variant's own softmax makes the predictions, so a variant whose softmax
returns NaN is scored as it would be in the chapter.

What differs is only speed: the whole dataset sits on the target device as tensors and every minibatch
is an index_select of a shuffled permutation, instead of PIL images pulled one by one through ToTensor
and a DataLoader (``python -m bench.tools.train_speed`` compares the two).

Regimes (bench.studies.training.presets.REGIMES): ``standard`` (the chapter), ``raw-pixels`` (inputs 0-255), ``high-lr``
(lr 10), ``low-precision`` (float16 and bfloat16). A run records the first step whose minibatch loss was
non-finite (``diverged_step``, 1-based count of minibatches, None if never); a diverged run is a result:
it keeps training and its accuracy is reported as measured.

Rows go to the run folder as they are measured: ``training.csv`` (TrainingRow: train_loss, train_acc,
test_acc per epoch; seconds and diverged_step per run, written last, so a run with a ``seconds`` row is
complete) and ``predictions.csv`` (PredictionRow). ``--resume RUN`` skips (variant, regime, device, dtype,
seed) combinations already complete.

For other commands (``softmax-bench all``)::

    from bench.studies.training.sweep import train_into
    from bench.studies.training.command import format_table
    results = train_into(run, variants, ["standard", "raw-pixels"], torch.device("cpu"), seed=0, quick=True)
    print(format_table(results))

``train_into(run, variants, regimes, device, seed, epochs=None, quick=False, dtype=None, lr=None,
batch_size=None) -> list[TrainResult]`` loads the data once, trains every (regime, dtype, variant), appends
rows to `run`, skips what `run` already holds (returning those results rebuilt from its rows) and turns a
failing run into a row with status error/oom instead of an exception.
"""
