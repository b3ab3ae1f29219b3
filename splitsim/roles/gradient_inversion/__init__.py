"""The honest-but-curious FedAvg server that reconstructs a participant's training images from
its model update (Zhu et al. 2019; Geiping et al. 2020): role.py, protocol.py, attack.py."""
