"""The embedded model zoo: pretrained tiny parts for the synthetic world."""
