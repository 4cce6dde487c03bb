from braintumor_tf.cli import main

main()
