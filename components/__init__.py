"""The steps of the causal model's lifecycle (data, nuisance, estimate, evaluate, publish, deploy,
monitor), each a plain function with a thin KFP component, and what they share: the model store
(registry), the event-log contract (events), settings (config) and constants. See docs/design.md."""
