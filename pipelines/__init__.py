"""The KFP training and monitoring pipelines (training), a run's settings (config) and the
`tauforge` command (cli). See docs/design.md."""
