"""Keras layers of the UNITER backbone (TF Model Garden split: layers → networks → task models)."""

from uniter_tf.layers.attention import UniterSelfAttention
from uniter_tf.layers.joint_layout import compact_joint_index
from uniter_tf.layers.optimal_transport import cosine_cost, ipot_plan, optimal_transport_distance
from uniter_tf.layers.pooler import UniterPooler
from uniter_tf.layers.region_embeddings import UniterRegionEmbeddings
from uniter_tf.layers.text_embeddings import UniterTextEmbeddings
from uniter_tf.layers.transformer import UniterTransformerLayer

__all__ = [
        "UniterPooler",
        "UniterRegionEmbeddings",
        "UniterSelfAttention",
        "UniterTextEmbeddings",
        "UniterTransformerLayer",
        "compact_joint_index",
        "cosine_cost",
        "ipot_plan",
        "optimal_transport_distance",
]
