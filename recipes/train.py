"""Train an embedding model from a decoder LLM, as in Wang et al. (2024).

Usage:
    accelerate launch recipes/train.py recipes/e5-mistral-7b/full.yaml
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/train.py recipes/e5-mistral-7b/full.yaml
    python recipes/train.py recipes/smollm2-135m/cpu.yaml --model_name_or_path PATH --output_dir OUT

Flags after the YAML override its values (any field of ModelArguments, DataArguments or E5TrainingConfig).
"""

import sys

from e5_mistral.training.run import main


if __name__ == "__main__":
    sys.exit(main())
