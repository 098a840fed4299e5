"""Restoration of a micrograph from its fitted degradation model.

Modules:

* ``restore``: Wiener deconvolution with the CTF and the causal graph's spectral model.
* ``denoiser``: the learned denoiser (a small U-Net, Noise2Noise-trained on the simulator; weights shipped).
* ``finetune``: the per-session fine-tune of the denoiser and its keep-if-better decision.
* ``fusion``: the Wiener-restored and denoised images fused per frequency band.
"""
