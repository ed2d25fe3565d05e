"""fraud_app: the application layer above the components: the `fraud` CLI, the demo, the end-to-end
benchmark, the local services, the process supervisor and the local KafkaSource stand-in."""
