"""CPU-sized lambda_KL sweep of the narrow steering run on the embedded Qwen2.5-Coder-0.5B: four
vectors trained in one compiled step (emjax.train.vmapped), each in <output_dir>/lambda_kl<value>/.

    emjax train --config=configs/embedded_steering_lambda_sweep.py
    emjax train --config=configs/embedded_steering_lambda_sweep.py --vmap-runs lambda_kl=0,3 seed=0,1,2

Everything else is embedded_steering_narrow.py (the sample data, alpha 256, lr 5e-4, 2 epochs);
train.lambda_kl there (3.0) is replaced by the sweep's values.
"""
import ml_collections

from configs import embedded_steering_narrow


def get_config():
    c = embedded_steering_narrow.get_config()
    c.name = "embedded_steering_lambda_sweep"
    c.output_dir = "runs/embedded_steering_lambda_sweep"
    c.vmap_runs = ml_collections.ConfigDict()
    # lambda_KL with train.kl_reduction "token_mean" (KL in nats per token):
    #   0    the general solution, SFT only (the paper's general run: lambda 0)
    #   1    ours: a third of the narrow run's weight, where the KL starts to bind
    #   3    embedded_steering_narrow.py's value (ours: token-mean KL, not upstream's divide-by-V scale)
    #   10   ours: over three times the narrow weight, to see the KL term dominate the SFT loss
    c.vmap_runs.lambda_kl = (0.0, 1.0, 3.0, 10.0)
    return c
