"""``python -m braintumor_tf.train [--config FILE] [--data PATH] [--out DIR] [--set k=v ...]``."""

from braintumor_tf.cli import train_main

if __name__ == "__main__":
    train_main()
