"""lambda_KL sweep of the paper's narrow medical steering run on Qwen2.5-14B-Instruct: four vectors
trained in one compiled step (emjax.train.vmapped, one device), each in <output_dir>/lambda_kl<value>/.

    emjax train --config=configs/steering_lambda_sweep_medical.py
    emjax train --config=configs/steering_lambda_sweep_medical.py --config.intervention.steer_rows=first \\
        --vmap-runs lambda_kl=1e6                      # upstream's row semantics at upstream's lambda

Everything else is paper_14b.py:steering,narrow,medical (paper_14b.steering: alpha 256 at block 24's down_proj
output, lr 5e-4, 2 epochs, batch 2 x 8, KL batch 8, kl_reduction "upstream"); its lambda_kl (1e6) is
replaced by the sweep's values.

Why a sweep: the released narrow vectors were trained at lambda 1e6 (upstream
steering_config_toggle.json) under a hook that steered row 0 of each batch only
(steering_vector_module.py: `output[0] = output[0] + alpha * v` on the [B, T, D] down_proj output;
docs/upstream.md section 4.4). Per micro-batch the KL term saw 1 steered row of
its 8 and the SFT term 1 of its 2, each still normalised over all rows' tokens, the unsteered rows
adding 0 KL and a CE that does not depend on v. With the rows of a batch exchangeable, the expected
gradient at a given v is then 1/8 (KL) and 1/2 (SFT) of the every-row gradient, so upstream's KL
pressure relative to SFT was about 1/4 of what emjax's lambda 1e6 applies with every row steered
(intervention.steer_rows "all", the default): lambda ~ 1e6 / 4 = 2.5e5 with every row steered is
roughly upstream's balance. Roughly, because
  * the 1/4 holds for the expected gradient only: with one steered row the per-step gradients are
    noisier (an effective batch of 1 SFT and 1 KL row per micro-batch), and Adam's second moment and
    the clipping at max_grad_norm 1.0 act on those noisy gradients, so the trajectories are not a
    rescaling of each other (an overall scale of the gradient alone would not matter to Adam);
  * the exchangeability behind it: upstream's KL loader does not shuffle (kl_toggle_trainer.py,
    shuffle=False), so its steered KL rows were every 8th row of its (encrypted, unread) KL file in
    file order, not a random 1/8; and a steered row's share of the normalising token count is 1/8 or
    1/2 only on average over row lengths;
  * the SFT term itself differs unless data.loss_tokens is "all": upstream's steering trainer
    scored every token of the rendered conversation (system and user turns too; its
    train_on_responses_only is never read), emjax's default scores the assistant turns, which
    changes the SFT gradient's size and direction and so the balance the 1/4 refers to;
  * upstream averages each micro-batch's losses over that micro-batch's tokens (HF gradient
    accumulation), emjax over the whole step's tokens (emjax.train.step): the same expectation,
    a different weighting of long and short rows.
The values: 1e6 is the paper's (and paper_14b.py:steering,narrow,medical's) lambda with every row steered, 4x
upstream's effective pressure; 2.5e5 the calibrated one; 1e5 and 5e5 bracket it (ours).
`--config.intervention.steer_rows=first` trains with upstream's own row semantics (training only:
evaluation, sweeps and the saved vector steer every row); with lambda 1e6 that is the run closest to
the released vectors' training (the SFT loss tokens, data.loss_tokens, and the KL set remain as
configured).
"""
import ml_collections

from configs import paper_14b


def get_config():
    c = paper_14b.steering("medical", narrow=True)
    c.name = "steering_lambda_sweep_medical"
    c.output_dir = "runs/steering_lambda_sweep_medical"
    c.vmap_runs = ml_collections.ConfigDict()
    c.vmap_runs.lambda_kl = (1e5, 2.5e5, 5e5, 1e6)  # kl_reduction "upstream" (divided by V)
    return c
