"""The query-side instruction format and the paper's task definitions.

One place for the prompt contract shared by training (collator), export (the sentence-transformers
prompts) and evaluation (mteb), so the three can never drift apart.

* Queries: ``Instruct: {task}\\nQuery: {query}`` (paper Eq. 1; the released code uses a bare newline).
* Documents: no instruction at all.
"""

from __future__ import annotations

import re

from .errors import E5MistralError


QUERY_TEMPLATE = "Instruct: {task}\nQuery: "


def query_prompt(task: str) -> str:
    """The prefix put before a query for the task definition ``task``."""
    task = task.strip()
    if not task:
        raise E5MistralError("an instruction (task definition) must be a non-empty string")
    return QUERY_TEMPLATE.format(task=task)


def format_query(task: str | None, query: str) -> str:
    """``Instruct: {task}\\nQuery: {query}``; the bare query when ``task`` is None or empty."""
    if task is None or not task.strip():
        return query
    return query_prompt(task) + query


# Task definitions of the synthetic symmetric families (paper Table 16).
STS_TASK = "Retrieve semantically similar text."
BITEXT_TASK = "Retrieve parallel sentences."

# Training instructions for the labeled datasets (paper Table 14; per-dataset split as in LLM2Vec Table 8).
TRAINING_INSTRUCTIONS: dict[str, str] = {
    "eli5": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
    "nli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "nli_symmetric": "Retrieve semantically similar text",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "quora_duplicates": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "quora_duplicates_symmetric": "Find questions that have the same meaning as the input question",
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
}

# Evaluation instructions per MTEB task and task type (paper Table 15 = unilm e5/utils.py
# get_task_def_by_task_name_and_type). The type decides where the instruction goes (see
# e5_mistral.evaluation.prompts): retrieval puts it before queries only, every other type before every input.
STS_TASKS = (
    "BIOSSES",
    "SICK-R",
    "STS12",
    "STS13",
    "STS14",
    "STS15",
    "STS16",
    "STS17",
    "STS22",
    "STSBenchmark",
)
EVALUATION_INSTRUCTIONS_BY_TYPE: dict[str, dict[str, str]] = {
    "STS": {name: STS_TASK for name in STS_TASKS},
    "Summarization": {
        "SummEval": "Given a news summary, retrieve other semantically similar summaries",
    },
    "BitextMining": {
        "BUCC": BITEXT_TASK,
        "Tatoeba": BITEXT_TASK,
    },
    "Classification": {
        "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or not-counterfactual",
        "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
        "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating category",
        "Banking77Classification": "Given a online banking query, find the corresponding intents",
        "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six emotions: anger, fear, joy, love, sadness, and surprise",
        "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
        "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
        "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
        "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
        "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented conversation",
        "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
        "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, or neutral",
    },
    "Clustering": {
        "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
        "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
        "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and abstracts",
        "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
        "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
        "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
        "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
        "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
        "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
        "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
        "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    },
    "PairClassification": {
        "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
        "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
        "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    },
    "Reranking": {
        "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
        "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
        "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
        "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    },
    "Retrieval": {
        "ArguAna": "Given a claim, find documents that refute the claim",
        "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
        "CQADupstackRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given question",
        "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
        "FEVER": "Given a claim, retrieve documents that support or refute the claim",
        "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
        "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
        "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
        "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
        "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
        "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the given question",
        "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
        "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
        "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
        "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
        "MIRACLRetrieval": "Given a question, retrieve Wikipedia passages that answer the question",
    },
}
EVALUATION_INSTRUCTIONS: dict[str, str] = {
    name: instruction for table in EVALUATION_INSTRUCTIONS_BY_TYPE.values() for name, instruction in table.items()
}
EVALUATION_TASK_TYPES: dict[str, str] = {
    name: task_type for task_type, table in EVALUATION_INSTRUCTIONS_BY_TYPE.items() for name in table
}
_VERSION_SUFFIX = re.compile(r"\.v\d+$")  # mteb 2 names revised tasks "Banking77Classification.v2"


def evaluation_instruction(task_name: str) -> str | None:
    """The paper's instruction for an MTEB task name (CQADupstack subsets share one; mteb 2's ``.v2`` revisions
    share their task's), or None if it has none."""
    task_name = _VERSION_SUFFIX.sub("", task_name)
    if task_name in EVALUATION_INSTRUCTIONS:
        return EVALUATION_INSTRUCTIONS[task_name]
    if task_name.startswith("CQADupstack"):
        return EVALUATION_INSTRUCTIONS["CQADupstackRetrieval"]
    return None
