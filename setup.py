"""pds_jax: preconditioned diffusion sampling for score_sde models in JAX/Flax."""
from setuptools import find_packages, setup

TFDS = ['tensorflow-datasets==4.9.10', 'array-record==0.8.6']

setup(
    name='pds_jax',
    version='0.1.0',
    description='Preconditioned diffusion sampling (PDS) and score_sde compatibility in JAX/Flax',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.11,<3.13',  # 3.12 is Colab's; every pinned wheel exists for 3.11 and 3.12, none of jax 0.10.2 for 3.10
    packages=find_packages(include=['pds_jax', 'pds_jax.*', 'configs', 'configs.*']),
    py_modules=['main', 'run_lib'],
    package_data={'pds_jax': ['assets/*/*', 'assets/*/checkpoints/*', 'assets/*/init/*']},
    install_requires=[
        'jax==0.10.2',
        'jaxlib==0.10.2',
        'flax==0.12.8',
        'optax==0.2.8',
        'diffrax==0.7.2',  # the probability-flow ODE (pds_jax.samplers.ode) and the likelihood's ODE
        'equinox==0.13.8',
        'orbax-checkpoint==0.12.8',
        'ml_collections==1.1.0',
        'absl-py==2.5.1',
        'numpy==2.4.6',
        'msgpack==1.2.4',
        'tqdm==4.70.1',
        'pillow==12.3.0',
        'matplotlib==3.11.2',
        'scikit-image==0.26.0',  # the bundled natural-image patches and faces (pds_jax.datasets)
        'scikit-learn==1.9.1',  # the bundled digits
    ],
    extras_require={
        'test': ['pytest==9.2.0', 'hypothesis==6.170.15', 'nbclient==0.11.0', 'nbformat==5.11.1',
                 'ipykernel==7.4.0', TFDS[0], TFDS[1]],
        'torch': ['torch==2.13.0'],
        'tfds': TFDS,  # score_sde's TFDS datasets, read from ArrayRecord files without TensorFlow
    },
)
