"""The networks: building torchvision models and their new head, naming and capturing layers, batch
feeding, the training loop, the checkpoint format, feature extraction, receptive fields, and the
disk plan read off the models' shapes."""
