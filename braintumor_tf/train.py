"""``python -m braintumor_tf.train [--config FILE] [--data PATH] [--run DIR] [--set k=v ...]``:
the same as ``braintumor-tf train``, kept for the commands in configs and docs."""

from braintumor_tf.cli import train_main

if __name__ == "__main__":
    train_main()
